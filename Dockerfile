# sla-monitor: slim, non-root, runs `sla-monitor run` with a HEALTHCHECK on /healthz.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sla_monitor ./sla_monitor
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/sla-monitor sla
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config /etc/sla-monitor
ENV SLA_MONITOR_CONFIG=/etc/sla-monitor/sla-monitor.yaml \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/sla-monitor
USER sla
EXPOSE 9799
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9799/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["sla-monitor"]
CMD ["run"]
