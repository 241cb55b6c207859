# sla-monitor: slim, non-root, runs `sla-monitor run` with a HEALTHCHECK on /healthz.
# Dependencies come from requirements.lock (exact versions and hashes; regenerate with
# `make lock` after changing pyproject.toml), so every build installs the same thing.
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY sla_monitor ./sla_monitor
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 sla \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/sla-monitor sla
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --no-deps /wheels/*.whl && rm -rf /wheels
COPY config /etc/sla-monitor
# SLA_MONITOR_LISTEN is where `run` serves (when --listen is not given) and what the
# HEALTHCHECK probes, so the two never disagree
ENV SLA_MONITOR_CONFIG=/etc/sla-monitor/sla-monitor.yaml \
    SLA_MONITOR_LISTEN=0.0.0.0:9799 \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/sla-monitor
# numeric, so Kubernetes' runAsNonRoot can verify it
USER 10001:10001
EXPOSE 9799
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "sla_monitor.entrypoints.healthcheck"]
ENTRYPOINT ["sla-monitor"]
CMD ["run"]
