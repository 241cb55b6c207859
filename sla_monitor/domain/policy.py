"""Policies: ordered rules; the first whose conditions match a contact gives its targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from sla_monitor.domain.calendar import CONTINUOUS, TargetClock
from sla_monitor.domain.events import Channel, EventKind, Status


class TargetName(StrEnum):
    AUTO_ACK = "auto_ack"
    FIRST_REPLY = "first_reply"
    ANSWER = "answer"
    NEXT_REPLY = "next_reply"
    KEEP_INFORMED = "keep_informed"


DEFAULT_FULFILLED_BY: dict[TargetName, frozenset[EventKind]] = {
    TargetName.AUTO_ACK: frozenset({EventKind.AUTO_REPLY, EventKind.AGENT_REPLY}),
    TargetName.FIRST_REPLY: frozenset({EventKind.AGENT_REPLY}),
    TargetName.ANSWER: frozenset({EventKind.CALL_ANSWERED}),
    TargetName.NEXT_REPLY: frozenset({EventKind.AGENT_REPLY}),
    TargetName.KEEP_INFORMED: frozenset({EventKind.AGENT_REPLY}),
}

WAITING = frozenset({Status.PENDING, Status.ON_HOLD})
# A status change is not an acknowledgement: setting a ticket to pending without a reply
# must not move the first-reply deadline (it would hide the lapse). Only keep_informed —
# "tell a waiting customer how it goes" — rests while the team waits on the customer. A
# policy may opt a target in with `pause_on`.
DEFAULT_PAUSE_ON: dict[TargetName, frozenset[Status]] = {
    TargetName.AUTO_ACK: frozenset(),
    TargetName.FIRST_REPLY: frozenset(),
    TargetName.ANSWER: frozenset(),
    TargetName.NEXT_REPLY: frozenset(),
    TargetName.KEEP_INFORMED: WAITING,
}


# How a lapse is raised, per target: a person must act now (page), later (ticket), or the
# lapse is only counted (none). A lapsed auto_ack is a machine's failure: no page per
# contact, a Prometheus rule on the auto-ack breach rate catches a broken autoresponder.
DEFAULT_SEVERITY: dict[TargetName, str] = {
    TargetName.AUTO_ACK: "none",
    TargetName.FIRST_REPLY: "page",
    TargetName.ANSWER: "page",
    TargetName.NEXT_REPLY: "page",
    TargetName.KEEP_INFORMED: "ticket",
}
DEFAULT_AT_RISK: dict[TargetName, str] = {
    TargetName.AUTO_ACK: "none",
    TargetName.FIRST_REPLY: "warning",
    TargetName.ANSWER: "warning",
    TargetName.NEXT_REPLY: "warning",
    TargetName.KEEP_INFORMED: "none",
}


@dataclass(frozen=True)
class TargetSpec:
    name: TargetName
    within: timedelta
    clock: TargetClock = CONTINUOUS
    warn_before: timedelta | None = None
    pause_on: frozenset[Status] | None = None
    fulfilled_by: frozenset[EventKind] | None = None
    severity: str | None = None  # page | ticket | none (default per target)
    at_risk: str | None = None  # warning | ticket | none (default per target)
    short_abandon: timedelta | None = None  # this rule's; None: the policy's

    @property
    def lapse_severity(self) -> str:
        return self.severity or DEFAULT_SEVERITY[self.name]

    @property
    def risk_severity(self) -> str:
        return self.at_risk or DEFAULT_AT_RISK[self.name]

    @property
    def pauses(self) -> frozenset[Status]:
        return DEFAULT_PAUSE_ON[self.name] if self.pause_on is None else self.pause_on

    @property
    def fulfilments(self) -> frozenset[EventKind]:
        if self.fulfilled_by is None:
            return DEFAULT_FULFILLED_BY[self.name]
        return self.fulfilled_by


@dataclass(frozen=True)
class ContactAttributes:
    channel: Channel
    queue: str
    priority: str | None = None
    tier: str | None = None
    tags: frozenset[str] = frozenset()
    customer_id: str | None = None


@dataclass(frozen=True)
class Match:
    """Conditions of a rule; an absent condition matches anything. Tags must all be present."""

    channels: frozenset[Channel] | None = None
    queues: frozenset[str] | None = None
    priorities: frozenset[str] | None = None
    tiers: frozenset[str] | None = None
    tags: frozenset[str] = frozenset()

    def matches(self, c: ContactAttributes) -> bool:
        return (
            (self.channels is None or c.channel in self.channels)
            and (self.queues is None or c.queue in self.queues)
            and (self.priorities is None or c.priority in self.priorities)
            and (self.tiers is None or c.tier in self.tiers)
            and self.tags <= c.tags
        )


@dataclass(frozen=True)
class Rule:
    name: str
    match: Match
    targets: tuple[TargetSpec, ...]
    close_after: timedelta | None = None  # a contact with no event for this long is closed


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    repeat_window: timedelta = timedelta(days=7)
    short_abandon: timedelta = timedelta(seconds=5)
    extra: dict[str, str] = field(default_factory=dict)

    def rule_for(self, contact: ContactAttributes) -> Rule | None:
        for rule in self.rules:
            if rule.match.matches(contact):
                return rule
        return None

    def could_match(self, channel: Channel, queue: str | None) -> bool:
        """Whether some rule could take a contact on this channel (and queue, when known),
        whatever its priority, tier and tags."""
        return any(
            (r.match.channels is None or channel in r.match.channels)
            and (queue is None or r.match.queues is None or queue in r.match.queues)
            for r in self.rules
        )

    def severities(self, rule: str | None, target: str) -> tuple[str, str]:
        """(lapse, at-risk) severities of a target under the named rule (defaults when the
        rule is gone from the config)."""
        name = TargetName(target)
        for r in self.rules:
            if r.name == rule:
                for t in r.targets:
                    if t.name is name:
                        return t.lapse_severity, t.risk_severity
        return DEFAULT_SEVERITY[name], DEFAULT_AT_RISK[name]

    def targets_for_channel(self, channel: Channel) -> list[TargetName]:
        """Targets any rule could give a contact on this channel (for zero-valued series)."""
        names: list[TargetName] = []
        for rule in self.rules:
            if rule.match.channels is None or channel in rule.match.channels:
                names.extend(t.name for t in rule.targets if t.name not in names)
        return names

    def all_withins(self) -> set[float]:
        return {t.within.total_seconds() for r in self.rules for t in r.targets}
