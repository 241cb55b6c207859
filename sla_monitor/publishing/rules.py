"""`sla-monitor rules`: the Prometheus recording and alerting rules, written from the
config's objectives, as Sloth and Pyrra write theirs from SLO specs. Objectives are
per channel, queue and target (first matching entry wins, then the default); the error
budget's period sets the burn-rate factors (the SRE workbook's 2 % of the budget in 1 h,
5 % in 6 h, 10 % in 1 d and in 3 d); a low-traffic guard keeps a handful of contacts from
paging; the phone service level follows the configured formula, against a goal per queue.
The shipped `config/prometheus/rules/sla-monitor.rules.yml` is this for the shipped config
(a test keeps them equal)."""

from __future__ import annotations

import json
from datetime import timedelta

from sla_monitor.config import Config, ObjectiveMatch
from sla_monitor.domain.timeutil import format_duration

LABELS = "channel, queue, target"
PLABELS = "channel, queue, priority, target"  # objectives promised to a priority
PRIORITY = "{{ with $labels.priority }} ({{ . }} priority){{ end }}"  # in an alert summary
OUTCOMES = "sla_target_outcomes_total"
JUDGED = 'outcome=~"met|breached"'
# (long window, short window, share of the period's budget it spends) per burn-rate pair
FAST = (("1h", "5m", 0.02), ("6h", "30m", 0.05))
SLOW = (("1d", "2h", 0.10), ("3d", "6h", 0.10))
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
HOURS = {"5m": 5 / 60, "30m": 0.5, "1h": 1, "2h": 2, "6h": 6, "1d": 24, "3d": 72}
# phone service level: answered in time over which outcomes (policy.service_level.formula)
SERVICE_LEVEL_OUTCOMES = {
    "late_abandons": "met|breached",
    "all_abandons": "met|breached|abandoned",
    "all_abandons_and_short": "met|breached|abandoned|abandoned_short",
}


def _window(period: timedelta) -> str:
    """A period as a PromQL range (28d, 30d, 7d, 12h)."""
    return format_duration(period).lower()


def _matchers(m: ObjectiveMatch, extra: str = "") -> str:
    parts = [extra] if extra else []
    for label in ("channel", "queue", "target", "priority"):
        values = getattr(m, label)
        if values:
            quoted = "|".join(sorted(values))
            parts.append(
                f"{label}={json.dumps(quoted)}"
                if len(values) == 1
                else f"{label}=~{json.dumps(quoted)}"
            )
    return "{" + ",".join(parts) + "}" if parts else ""


def _factor(share: float, period: timedelta, window: str) -> str:
    value = share * (period.total_seconds() / 3600) / HOURS[window]
    return f"{value:g}"


def render_rules(config: Config, runbooks_url: str) -> str:
    o = config.settings.objectives
    period = _window(o.period)
    windows = [*WINDOWS, period] if period not in WINDOWS else list(WINDOWS)
    out: list[str] = [
        "# Prometheus rules for sla-monitor, written by `sla-monitor rules` from the config's",
        "# objectives: edit those and run it again (a test keeps this file equal to its output).",
        "# Recording rules: objectives per channel/queue/target, error ratios over the burn-rate",
        "# windows, compliance, the error budget left, the phone service level and its goal.",
        "# Alerting rules: breaches, burn rates (multi-window, with a low-traffic guard), source",
        "# health, monitor absent. Every alert links to its runbook, served by the monitor at",
        f"# {runbooks_url}/<alert> (config: external_url).",
        "# Tested by `promtool test rules config/prometheus/tests/sla-monitor.test.yml`.",
        "groups:",
        "  - name: sla-monitor.recording",
        "    rules:",
    ]

    def record(name: str, expr: str, comment: str = "", labels: str = "") -> None:
        out.append(f"      - record: {name}")
        if "\n" in expr:
            out.append("        expr: |")
            out.extend(f"          {line}" for line in expr.splitlines())
        else:
            out.append(f"        expr: {expr}" + (f"  # {comment}" if comment else ""))
        if labels:
            out.append(f"        labels: {{{labels}}}")

    for w in windows:
        record(
            f"sla:target_error_ratio:rate{w}",
            f'sum by ({LABELS}) (rate({OUTCOMES}{{outcome="breached"}}[{w}]))\n/\n'
            f"sum by ({LABELS}) (rate({OUTCOMES}{{{JUDGED}}}[{w}]))",
        )
    # the objective of every channel/queue/target judged in the period: the first entry that
    # matches it, else the default (from a recorded series, so present at every evaluation
    # whatever the scrape interval)
    judged_in_period = f"sla:target_error_ratio:rate{period}"
    seen: list[str] = []
    for entry in (e for e in o.rules if not e.match.priority):
        sel = _matchers(entry.match)
        base = f"0 * ({judged_in_period}{sel} >= 0) + {entry.ratio:g}"
        if seen:
            base = f"({base})\nunless on({LABELS})\n(" + "\nor\n".join(seen) + ")"
        record("sla:objective:ratio", base)
        seen.append(f"{judged_in_period}{sel}")
    default = f"0 * ({judged_in_period} >= 0) + {o.ratio:g}"
    if seen:
        default = f"({default})\nunless on({LABELS})\n(" + "\nor\n".join(seen) + ")"
    record("sla:objective:ratio", default, "share of targets to meet; budget = 1 - this")
    for w in dict.fromkeys(("1h", "6h", "1d", period)):
        record(f"sla:target_compliance:ratio_rate{w}", f"1 - sla:target_error_ratio:rate{w}")
    record(
        "sla:error_budget_remaining:ratio",
        f"1 - sla:target_error_ratio:rate{period} / on({LABELS}) (1 - sla:objective:ratio)",
    )
    # promises to a priority within a queue (urgent first replies at 99 %): the same, per
    # priority, for the priorities named only; the first such entry that matches wins
    promised = [e for e in o.rules if e.match.priority]
    wanted = "|".join(sorted({p for e in promised for p in e.match.priority or []}))
    if promised:
        only = f'priority=~"{wanted}"'
        for w in windows:
            record(
                f"sla:target_error_ratio_by_priority:rate{w}",
                f'sum by ({PLABELS}) (rate({OUTCOMES}{{outcome="breached",{only}}}[{w}]))\n/\n'
                f"sum by ({PLABELS}) (rate({OUTCOMES}{{{JUDGED},{only}}}[{w}]))",
            )
        judged_p = f"sla:target_error_ratio_by_priority:rate{period}"
        taken: list[str] = []
        for entry in promised:
            sel = _matchers(entry.match)
            base = f"0 * ({judged_p}{sel} >= 0) + {entry.ratio:g}"
            if taken:
                base = f"({base})\nunless on({PLABELS})\n(" + "\nor\n".join(taken) + ")"
            record("sla:objective_by_priority:ratio", base)
            taken.append(f"{judged_p}{sel}")
        record(
            "sla:error_budget_remaining_by_priority:ratio",
            f"1 - {judged_p} / on({PLABELS}) (1 - sla:objective_by_priority:ratio)",
        )
    record("sla:source_watermark_lag:seconds", "time() - sla_source_watermark_timestamp_seconds")
    phone = 'channel="phone",target="answer"'
    # the service level per queue, under the formula its rule sets (else the policy's);
    # the calls it judges in the last hour, for the low-traffic guard
    named = sorted({q for r in config.settings.policy.rules for q in r.match.queue or []})
    by_formula: dict[str, list[str]] = {}
    for queue in named:
        if (formula := config.formula_for(queue)) != config.service_level_formula:
            by_formula.setdefault(formula, []).append(queue)
    others = "|".join(q for qs in by_formula.values() for q in qs)
    groups = [
        *((f, f',queue=~"{"|".join(qs)}"') for f, qs in sorted(by_formula.items())),
        (config.service_level_formula, f',queue!~"{others}"' if others else ""),
    ]
    for formula, sel in groups:
        judged = SERVICE_LEVEL_OUTCOMES[formula]
        for w in ("1h", "1d"):
            record(
                f"sla:phone_service_level:ratio_rate{w}",
                f'sum by (queue) (rate({OUTCOMES}{{{phone}{sel},outcome="met"}}[{w}]))\n/\n'
                f'sum by (queue) (rate({OUTCOMES}{{{phone}{sel},outcome=~"{judged}"}}[{w}]))',
                labels=f"formula: {formula}",
            )
        record(
            "sla:phone_service_level_calls:increase1h",
            f'sum by (queue) (increase({OUTCOMES}{{{phone}{sel},outcome=~"{judged}"}}[1h]))',
        )
    goals = o.phone_service_level_by_queue
    for queue, goal in sorted(goals.items()):
        record(
            "sla:phone_service_level_goal:ratio",
            f'0 * sum by (queue) ({OUTCOMES}{{{phone},queue="{queue}"}}) + {goal:g}',
        )
    default_goal = f"0 * sum by (queue) ({OUTCOMES}{{{phone}}}) + {o.phone_service_level:g}"
    if goals:
        names = "|".join(sorted(goals))
        listed = f'sum by (queue) ({OUTCOMES}{{{phone},queue=~"{names}"}})'
        default_goal = f"({default_goal})\nunless on(queue)\n{listed}"
    record("sla:phone_service_level_goal:ratio", default_goal, "answered within the target")
    # the contact-centre figures a phone lead reads, per queue: calls waiting now and the
    # longest wait, average speed of answer, abandon rate (short abandons in and out)
    waiting = f'sla_open_targets{{{phone},state!="paused"}}'
    record("sla:phone_calls_waiting:count", f"sum by (queue) ({waiting})")
    oldest = f"sla_oldest_open_target_start_timestamp_seconds{{{phone}}}"
    record(  # 0 for a queue with nobody waiting (the gauge is absent then)
        "sla:phone_longest_wait:seconds",
        f"(time() - min by (queue) ({oldest}))\nor on(queue)\n(0 * sla:phone_calls_waiting:count)",
    )
    record(
        "sla:phone_average_speed_of_answer:seconds_rate1h",
        f"sum by (queue) (rate(sla_response_seconds_sum{{{phone}}}[1h]))\n/\n"
        f"sum by (queue) (rate(sla_response_seconds_count{{{phone}}}[1h]))",
    )
    for name, gave_up, ended in (
        ("abandon", "abandoned|abandoned_short", "met|breached|abandoned|abandoned_short"),
        ("abandon_not_short", "abandoned", "met|breached|abandoned"),
    ):
        record(
            f"sla:phone_{name}:ratio_rate1h",
            f'sum by (queue) (rate({OUTCOMES}{{{phone},outcome=~"{gave_up}"}}[1h]))\n/\n'
            f'sum by (queue) (rate({OUTCOMES}{{{phone},outcome=~"{ended}"}}[1h]))',
        )

    out += ["", "  - name: sla-monitor.alerts", "    rules:"]

    def guard(window: str, labels: str, only: str = "") -> str:
        return (
            f"and on({labels})\n"
            f"sum by ({labels}) (increase({OUTCOMES}{{{JUDGED}{only}}}[{window}])) "
            f">= {o.min_events}"
        )

    def burn(pairs: tuple[tuple[str, str, float], ...]) -> str:
        kinds = [("sla:target_error_ratio", "sla:objective:ratio", LABELS, "")]
        if promised:
            only = f',priority=~"{wanted}"'
            kinds.append(
                (
                    "sla:target_error_ratio_by_priority",
                    "sla:objective_by_priority:ratio",
                    PLABELS,
                    only,
                )
            )
        parts = []
        for ratio, objective, labels, only in kinds:
            for long, short, share in pairs:
                factor = _factor(share, o.period, long)
                budget = f"({factor} * (1 - {objective}))"
                parts.append(
                    "(\n"
                    f"  {ratio}:rate{long} > on({labels}) group_left() {budget}\n"
                    "  and\n"
                    f"  {ratio}:rate{short} > on({labels}) group_left() {budget}\n"
                    + "".join(f"  {line}\n" for line in guard(long, labels, only).splitlines())
                    + ")"
                )
        return "\nor\n".join(parts)

    def describe(pairs: tuple[tuple[str, str, float], ...]) -> str:
        return ", or ".join(
            f"{_factor(share, o.period, long)}x over {long} and {short}"
            for long, short, share in pairs
        )

    alerts: list[tuple[str, str, str, str, str, str]] = [
        (
            "SLABreachedTargetsOpen",
            f'sum by ({LABELS}) (sla_open_targets{{state="breached"}}) > 0',
            "1m",
            "warning",
            "{{ $value }} {{ $labels.target }} breached and still unanswered in "
            "{{ $labels.channel }}/{{ $labels.queue }}",
            "Contacts in {{ $labels.queue }} passed their {{ $labels.target }} deadline and "
            "nobody has answered yet. Each one is paged separately as AcknowledgementLapsed.",
        ),
        (
            "SLATargetsAtRisk",
            f'sum by ({LABELS}) (sla_open_targets{{state="at_risk"}}) > 0',
            "5m",
            "warning",
            "{{ $value }} {{ $labels.target }} targets at risk in "
            "{{ $labels.channel }}/{{ $labels.queue }}",
            "Contacts are past their warning point and will breach unless answered.",
        ),
        (
            "SLAErrorBudgetBurnFast",
            burn(FAST),
            "2m",
            "page",
            "{{ $labels.target }} in {{ $labels.channel }}/{{ $labels.queue }}"
            f"{PRIORITY} is burning its error budget fast "
            "({{ $value | humanizePercentage }} breached)",
            f"At this rate the error budget of {period} for {{{{ $labels.target }}}} is gone "
            f"within days (multi-window burn rate: {describe(FAST)}; at least "
            f"{o.min_events} targets judged).",
        ),
        (
            "SLAErrorBudgetBurnSlow",
            burn(SLOW),
            "15m",
            "ticket",
            "{{ $labels.target }} in {{ $labels.channel }}/{{ $labels.queue }}"
            f"{PRIORITY} is steadily missing its objective "
            "({{ $value | humanizePercentage }} breached)",
            f"The objective over {period} will be missed unless staffing or routing changes "
            f"(burn rate {describe(SLOW)}; at least {o.min_events} targets judged).",
        ),
        (
            "SLAPhoneServiceLevelLow",
            "(sla:phone_service_level:ratio_rate1h < on(queue) group_left() "
            "sla:phone_service_level_goal:ratio)\n"
            "and on(queue)\n"
            f"sla:phone_service_level_calls:increase1h >= {o.min_events}",
            "15m",
            "warning",
            "Phone service level in {{ $labels.queue }} is {{ $value | humanizePercentage }}, "
            "below goal",
            "Fewer calls than the goal were answered within the answer target over the last "
            "hour ({{ $labels.formula }}).",
        ),
        (
            "SLACallsWaitingTooLong",
            f'sum by (queue) (sla_open_targets{{{phone},state="breached"}}) > 0',
            "30s",
            "warning",
            "{{ $value }} calls in {{ $labels.queue }} have waited longer than the answer "
            "target and are still waiting",
            "Callers are on hold past the answer target right now (each call is paged as "
            "AcknowledgementLapsed): more agents on the phones, or overflow the queue.",
        ),
        (
            "SLASourceDown",
            "sla_source_up == 0",
            "5m",
            "warning",
            "Source {{ $labels.source }} is failing to poll",
            "The last polls of {{ $labels.source }} failed; see "
            "sla_source_polls_total{result} and the monitor's log. Breaches on it wait until "
            "it is read again.",
        ),
        (
            "SLAAutoAckFailing",
            "(\n"
            "  sum by (channel, queue) (increase("
            f'{OUTCOMES}{{target="auto_ack", outcome="breached"}}[30m]))\n'
            "  /\n"
            f'  sum by (channel, queue) (increase({OUTCOMES}{{target="auto_ack"}}[30m]))\n'
            ") > 0.5\n"
            "and\n"
            f'sum by (channel, queue) (increase({OUTCOMES}{{target="auto_ack"}}[30m])) >= 5',
            "10m",
            "page",
            "Automatic acknowledgements are failing for {{ $labels.channel }} in "
            "{{ $labels.queue }} ({{ $value | humanizePercentage }} lapsed)",
            "More than half of the auto-ack targets in the last 30 minutes lapsed: the "
            "autoresponder (helpdesk trigger, mailbox rule) is probably broken. Lapsed "
            "auto-acks do not page per contact; this rule does.",
        ),
        (
            "SLAContactsWithoutPolicy",
            "sum by (channel, queue) (increase(sla_contacts_unmatched_total[30m])) > 0",
            "0m",
            "warning",
            "{{ $value | humanize }} {{ $labels.channel }} contacts in {{ $labels.queue }} "
            "arrived with no policy rule in 30 minutes",
            "No policy rule matches these contacts, so they have no targets: no breach of "
            "theirs is ever detected. Add a rule for channel {{ $labels.channel }}, queue "
            "{{ $labels.queue }}.",
        ),
        (
            "SLASourceStale",
            "time() - sla_source_last_success_timestamp_seconds > 900",
            "1m",
            "page",
            "Source {{ $labels.source }} has not been read for {{ $value | humanizeDuration }}",
            "No successful poll of {{ $labels.source }} for over 15 minutes: its contacts are "
            "not being checked.",
        ),
        (
            "SLASourceWatermarkLagHigh",
            "sla:source_watermark_lag:seconds > 900",
            "10m",
            "warning",
            "Source {{ $labels.source }} is {{ $value | humanizeDuration }} behind",
            "{{ $labels.source }} has only been read completely up to "
            "{{ $value | humanizeDuration }} ago; breaches are declared late.",
        ),
        (
            "SLAMonitorAbsent",
            "absent(sla_build_info)",
            "5m",
            "page",
            "sla-monitor is not being scraped",
            "Prometheus has no sla_build_info: the monitor is down or unreachable, so no "
            "breach is detected or paged.",
        ),
    ]
    for i, (name, expr, for_, severity, summary, description) in enumerate(alerts):
        if i:
            out.append("")
        out.append(f"      - alert: {name}")
        if "\n" in expr:
            out.append("        expr: |")
            out.extend(f"          {line}" for line in expr.splitlines())
        else:
            out.append(f"        expr: {expr}")
        out += [
            f"        for: {for_}",
            f"        labels: {{severity: {severity}}}",
            "        annotations:",
            f"          summary: {json.dumps(summary)}",
            f"          description: {json.dumps(description)}",
            f"          runbook_url: {runbooks_url}/{name}",
        ]
    return "\n".join(out) + "\n"
