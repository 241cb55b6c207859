"""Configuration: YAML -> validated settings -> domain objects.

Every error names the file, the line, the key path and what is wrong, so that
`sla-monitor check-config` points straight at the mistake.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sla_monitor.domain.calendar import (
    CONTINUOUS,
    BusinessCalendar,
    CalendarError,
    DailyHours,
    TargetClock,
)
from sla_monitor.domain.events import Channel, EventKind, Status
from sla_monitor.domain.policy import Match, Policy, Rule, TargetName, TargetSpec
from sla_monitor.domain.timeutil import format_duration, parse_duration
from sla_monitor.secrets import SecretRef

DEFAULT_LISTEN = "0.0.0.0:9799"
DEFAULT_DATABASE = "sqlite:///sla-monitor.db"
_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")


class ConfigError(Exception):
    """One or more problems in a config file; str() lists them one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(v: Any) -> timedelta:
    try:
        return parse_duration(v)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


class DatabaseConfig(_Model):
    url: str | None = None
    url_env: str | None = Field(None, description="name of an env var holding the URL")
    url_file: str | None = Field(None, description="file holding the URL (e.g. a secret)")

    @model_validator(mode="after")
    def _one(self) -> DatabaseConfig:
        if sum(x is not None for x in (self.url, self.url_env, self.url_file)) > 1:
            raise ValueError("give only one of url, url_env, url_file")
        return self

    def resolve(self) -> str:
        if self.url_env:
            value = os.environ.get(self.url_env)
            if not value:
                raise ConfigError(
                    [f"database.url_env: environment variable {self.url_env} is not set"]
                )
            return value
        if self.url_file:
            try:
                return Path(self.url_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    [f"database.url_file: cannot read {self.url_file}: {exc.strerror}"]
                ) from None
        return self.url or DEFAULT_DATABASE


class HolidaysConfig(_Model):
    country: str | None = None
    subdivision: str | None = None
    dates: list[date] = []


class Period(_Model):
    from_: datetime | str = Field(alias="from")
    to: datetime | str


class CalendarConfig(_Model):
    timezone: str
    hours: dict[str, list[str] | str]
    holidays: HolidaysConfig = HolidaysConfig()
    breaks: list[Period] = []
    extra_shifts: list[Period] = []

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r} (e.g. Europe/London)") from None
        return v

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: dict[str, list[str] | str]) -> dict[str, list[str] | str]:
        for key, spans in v.items():
            _weekdays(key)
            for span in [spans] if isinstance(spans, str) else spans:
                _daily_hours(span)
        return v

    def build(self, name: str) -> BusinessCalendar:
        weekly: dict[int, list[DailyHours]] = {d: [] for d in range(7)}
        for key, spans in self.hours.items():
            for day in _weekdays(key):
                for span in [spans] if isinstance(spans, str) else spans:
                    weekly[day].append(_daily_hours(span))
        tz = ZoneInfo(self.timezone)
        return BusinessCalendar(
            name,
            self.timezone,
            weekly,
            holiday_dates=self.holidays.dates,
            holiday_country=self.holidays.country,
            holiday_subdivision=self.holidays.subdivision,
            breaks=[(_local(p.from_, tz), _local(p.to, tz)) for p in self.breaks],
            extra_shifts=[(_local(p.from_, tz), _local(p.to, tz)) for p in self.extra_shifts],
        )


def _weekdays(key: str) -> list[int]:
    out: list[int] = []
    for part in str(key).lower().replace(" ", "").split(","):
        if "-" in part:
            a, _, b = part.partition("-")
            if a not in _DAYS or b not in _DAYS:
                raise ValueError(f"bad weekday range {part!r} (use e.g. mon-fri)")
            i, j = _DAYS.index(a), _DAYS.index(b)
            out.extend(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        elif part in _DAYS:
            out.append(_DAYS.index(part))
        else:
            raise ValueError(f"bad weekday {part!r} (use mon, tue, ..., sun, or mon-fri)")
    return out


def _daily_hours(span: str) -> DailyHours:
    m = _HOURS.match(str(span).strip())
    if not m:
        raise ValueError(f"bad hours {span!r} (use HH:MM-HH:MM, e.g. 09:00-17:30)")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"bad hours {span!r}")
    start, end = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
    if end <= start:  # overnight, e.g. 22:00-06:00
        end += 86400
    return DailyHours(start, end)


def _local(value: datetime | str, tz: ZoneInfo) -> datetime:
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=tz)


class ClockConfig(_Model):
    business: str


class TargetConfig(_Model):
    within: timedelta
    clock: Literal["calendar"] | ClockConfig = "calendar"
    warn_before: timedelta | float | None = None
    pause_on: list[Status] | None = None
    fulfilled_by: list[EventKind] | None = None
    severity: Literal["page", "ticket", "none"] | None = None  # how a lapse is raised
    at_risk: Literal["warning", "ticket", "none"] | None = None  # how its warning is raised

    @field_validator("within", mode="before")
    @classmethod
    def _within(cls, v: Any) -> timedelta:
        return _duration(v)

    @field_validator("warn_before", mode="before")
    @classmethod
    def _warn(cls, v: Any) -> timedelta | float | None:
        if v is None:
            return None
        if isinstance(v, str) and v.strip().endswith("%"):
            try:
                return float(v.strip()[:-1]) / 100  # a fraction of `within` (checked later)
            except ValueError:
                raise ValueError(f"not a percentage: {v!r}") from None
        if isinstance(v, float) and 0 < v < 1:
            return v  # a fraction of `within`
        return _duration(v)


class MatchConfig(_Model):
    channel: list[Channel] | None = None
    queue: list[str] | None = None
    priority: list[str] | None = None
    tier: list[str] | None = None
    tags: list[str] = []

    @field_validator("channel", "queue", "priority", "tier", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class ServiceLevelConfig(_Model):
    # answered within threshold / (answered + abandoned after threshold) by default;
    # contact centres differ on whether abandons before the threshold count.
    formula: Literal["late_abandons", "all_abandons", "all_abandons_and_short"] = "late_abandons"


class RuleConfig(_Model):
    name: str
    match: MatchConfig = MatchConfig()
    targets: dict[TargetName, TargetConfig]
    close_after: timedelta | None = None  # idle this long: closed (open clocks end)
    # contact centres set these per queue: a call abandoned within this is noise (default:
    # policy.short_abandon), and which abandons the service level counts (its queues only)
    short_abandon: timedelta | None = None
    service_level: ServiceLevelConfig | None = None

    @field_validator("close_after", mode="before")
    @classmethod
    def _close_after(cls, v: Any) -> timedelta | None:
        if v is None:
            return None
        d = _duration(v)
        if d <= timedelta(0):
            raise ValueError("close_after must be longer than 0")
        return d

    @field_validator("short_abandon", mode="before")
    @classmethod
    def _short_abandon(cls, v: Any) -> timedelta | None:
        return None if v is None else _duration(v)

    @model_validator(mode="after")
    def _formula_names_its_queues(self) -> RuleConfig:
        if self.service_level is not None and not self.match.queue:
            raise ValueError(
                "service_level in a rule applies to the queues it matches: give match.queue"
            )
        return self


class PolicyConfig(_Model):
    repeat_window: timedelta = timedelta(days=7)
    short_abandon: timedelta = timedelta(seconds=5)
    service_level: ServiceLevelConfig = ServiceLevelConfig()
    rules: list[RuleConfig]

    @field_validator("repeat_window", "short_abandon", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> timedelta:
        return _duration(v)


def contact_link(template: str | None, source: str, conversation_id: str) -> str | None:
    """A contact's page in its source, from the source's `contact_url` template."""
    if not template:
        return None
    return template.format(conversation_id=conversation_id, source=source)


class ObjectiveMatch(_Model):
    """Which series an objective is for (labels of `sla_target_outcomes_total`). With a
    priority, it is a promise to that priority within the queue, on top of the queue's."""

    channel: list[str] | None = None
    queue: list[str] | None = None
    target: list[str] | None = None
    priority: list[str] | None = None

    @field_validator("channel", "queue", "target", "priority", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class ObjectiveConfig(_Model):
    match: ObjectiveMatch = ObjectiveMatch()
    ratio: float = Field(gt=0, lt=1)  # share of targets met, e.g. 0.97


class ObjectivesConfig(_Model):
    """The promises to keep over a period, for `sla-monitor rules` (Prometheus rules)."""

    ratio: float = Field(0.95, gt=0, lt=1)  # the default: share of targets met
    period: timedelta = timedelta(days=30)  # the error budget's period
    rules: list[ObjectiveConfig] = []  # per channel/queue/target; the first match wins
    phone_service_level: float = Field(0.80, gt=0, le=1)  # default goal per phone queue
    phone_service_level_by_queue: dict[str, float] = {}
    min_events: int = Field(10, ge=1)  # fewer judged targets in a window: no burn alert

    def for_series(self, channel: str, queue: str, target: str) -> float:
        """The objective of one channel/queue/target: the first entry that matches it."""
        for entry in self.rules:
            m = entry.match
            if m.priority is None and (
                (m.channel is None or channel in m.channel)
                and (m.queue is None or queue in m.queue)
                and (m.target is None or target in m.target)
            ):
                return entry.ratio
        return self.ratio

    @field_validator("period", mode="before")
    @classmethod
    def _period(cls, v: Any) -> timedelta:
        d = _duration(v)
        if d < timedelta(days=1):
            raise ValueError("period must be at least 1d (e.g. 28d or 30d)")
        return d


class QueueLabelsConfig(_Model):
    """A bound on the `queue` label values a source creates (metrics only)."""

    allow: list[str] | None = None  # these keep their own label (with `queues`)
    max: int | None = Field(None, ge=1, le=100_000)  # at most this many labels, first seen first


class SourceConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: str
    channel: Channel | None = None
    interval: timedelta = timedelta(seconds=30)
    queues: list[str] = []
    queue_labels: QueueLabelsConfig = QueueLabelsConfig()
    contact_url: str | None = None  # e.g. https://desk.example.com/tickets/{conversation_id}
    options: dict[str, Any] = {}

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, v: Any) -> timedelta:
        return _duration(v)

    @model_validator(mode="after")
    def _room_for_the_kept_queues(self) -> SourceConfig:
        always = set(self.queues) | set(self.queue_labels.allow or ())
        if self.queue_labels.max is not None and self.queue_labels.max < len(always):
            raise ValueError(
                f"queue_labels.max is {self.queue_labels.max}, but {len(always)} queues "
                "(queues and queue_labels.allow) always keep their own label: raise max"
            )
        return self


class BasicAuthConfig(_Model):
    username: str
    password: SecretRef


class TlsClientConfig(_Model):
    ca_file: str | None = None  # to trust a private CA
    cert_file: str | None = None  # a client certificate (with key_file)
    key_file: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsClientConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together")
        return self


class AlertingConfig(_Model):
    alertmanager_urls: list[str] = []  # every one gets every alert (an HA pair: list both)
    resend_interval: timedelta = timedelta(minutes=1)  # keep below resolve_timeout (5m)
    timeout: timedelta = timedelta(seconds=10)
    # credentials for every Alertmanager (secrets from env or file, never in the config)
    basic_auth: BasicAuthConfig | None = None
    bearer_token: SecretRef | None = None
    tls: TlsClientConfig | None = None

    @model_validator(mode="after")
    def _one_auth(self) -> AlertingConfig:
        if self.basic_auth is not None and self.bearer_token is not None:
            raise ValueError("give basic_auth or bearer_token, not both")
        return self

    def client_options(self, base: Path) -> dict[str, Any]:
        """httpx.Client options for these credentials (files relative to `base`); reads
        the secrets (ValueError naming a missing one, never its value)."""
        options: dict[str, Any] = {}
        if self.basic_auth is not None:
            options["auth"] = (self.basic_auth.username, self.basic_auth.password.read())
        if self.bearer_token is not None:
            options["headers"] = {"Authorization": f"Bearer {self.bearer_token.read()}"}
        if self.tls is not None:
            context = ssl.create_default_context(
                cafile=str(base / self.tls.ca_file) if self.tls.ca_file else None
            )
            if self.tls.cert_file and self.tls.key_file:
                context.load_cert_chain(base / self.tls.cert_file, base / self.tls.key_file)
            options["verify"] = context
        return options

    def files(self) -> dict[str, str]:
        """Files these credentials read, by key path under `alerting`."""
        tls = self.tls or TlsClientConfig()
        named = {"tls.ca_file": tls.ca_file, "tls.cert_file": tls.cert_file}
        named["tls.key_file"] = tls.key_file
        return {k: v for k, v in named.items() if v}

    @field_validator("resend_interval", "timeout", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> timedelta:
        return _duration(v)

    @field_validator("alertmanager_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"not an http(s) URL: {url!r}")
        return v


class ClusterConfig(_Model):
    """Several replicas on one PostgreSQL (docs/scaling.md)."""

    enabled: bool = False
    replica_id: str | None = None  # default: host name and process id
    lease_ttl: timedelta = timedelta(seconds=10)  # a dead replica's work moves within this

    @field_validator("lease_ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> timedelta:
        return _duration(v)


class LimitsConfig(_Model):
    """What input is accepted (docs/reliability.md); anything outside is set aside."""

    earliest: datetime = datetime(2000, 1, 1, tzinfo=UTC)  # events before this are rejected
    future: timedelta = timedelta(days=1)  # events more than this after the clock: rejected

    @field_validator("future", mode="before")
    @classmethod
    def _future(cls, v: Any) -> timedelta:
        return _duration(v)

    @field_validator("earliest", mode="after")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)


class Settings(_Model):
    database: DatabaseConfig | str = DatabaseConfig()
    listen: str = DEFAULT_LISTEN
    # where people reach the monitor (as Prometheus's --web.external-url): alerts link to
    # <external_url>/runbooks/<alert>; default http://localhost:<listen port>/
    external_url: str | None = None
    # TLS and basic auth for /metrics (exporter-toolkit's web-config.yml format)
    web_config_file: str | None = None
    alerting: AlertingConfig = AlertingConfig()
    cluster: ClusterConfig = ClusterConfig()
    objectives: ObjectivesConfig = ObjectivesConfig()
    limits: LimitsConfig = LimitsConfig()
    calendars: dict[str, CalendarConfig] = {}
    policy: PolicyConfig
    sources: list[SourceConfig] = []

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @field_validator("external_url")
    @classmethod
    def _external_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"external_url must be an http(s) URL, got {v!r}")
        return v

    def runbooks_url(self, listen: str | None = None) -> str:
        """Where the runbooks are served: <external_url>/runbooks."""
        base = self.external_url or f"http://localhost:{parse_listen(listen or self.listen)[1]}/"
        return base.rstrip("/") + "/runbooks"


def parse_listen(v: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen address must be HOST:PORT, got {v!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class Config:
    path: str
    settings: Settings
    calendars: dict[str, BusinessCalendar]
    policy: Policy
    service_level_formula: str

    @property
    def database_url(self) -> str:
        db = self.settings.database
        return db if isinstance(db, str) else db.resolve()

    def formula_for(self, queue: str) -> str:
        """The phone service level formula of a queue: the first rule that names the queue
        and sets one, else policy.service_level.formula."""
        for rule in self.settings.policy.rules:
            if rule.service_level is not None and rule.match.queue and queue in rule.match.queue:
                return rule.service_level.formula
        return self.service_level_formula

    def preflight(self, check_source: SourceCheck, database: bool = True) -> list[str]:
        """What `run` would meet that a check can find without side effects: each
        source's `check_source` problems (secrets unreadable, files missing) and a database
        URL that cannot be resolved (`database`: unless another is given); each as
        file:line: key: problem."""
        try:
            root = yaml.compose(Path(self.path).read_text())
        except (OSError, yaml.YAMLError):
            root = None
        out = []
        for i, src in enumerate(self.settings.sources):
            for tail, msg in check_source(src.kind, src.options):
                where = ("sources", i, *tail)
                line = _node_line(root, where)
                out.append(f"{self.path}:{line}: {_path(where)}: {msg}")
        alerting = self.settings.alerting
        here = Path(self.path).parent
        for key, name in alerting.files().items():
            if not (here / name).is_file():
                where = ("alerting", *key.split("."))
                out.append(
                    f"{self.path}:{_node_line(root, where)}: alerting.{key}: {name}: no such file"
                )
        secrets = {"basic_auth.password": alerting.basic_auth and alerting.basic_auth.password}
        secrets["bearer_token"] = alerting.bearer_token
        for key, ref in secrets.items():
            try:
                _ = ref.read() if ref else None
            except ValueError as exc:
                where = ("alerting", *key.split("."))
                out.append(f"{self.path}:{_node_line(root, where)}: alerting.{key}: {exc}")
        try:
            _ = self.database_url if database else None
        except ConfigError as exc:
            line = _node_line(root, ("database",))
            out += [f"{self.path}:{line}: {problem}" for problem in exc.problems]
        return out

    @property
    def web_config_path(self) -> str | None:
        """The web config file, relative to the config file's folder."""
        name = self.settings.web_config_file
        return None if name is None else str(Path(self.path).parent / name)

    def unmatched_sources(self) -> list[str]:
        """Configured sources whose contacts no policy rule can take (they would get no targets
        and be counted in sla_contacts_unmatched_total)."""
        out = []
        for i, src in enumerate(self.settings.sources):
            if src.channel is None:
                continue
            queues: list[str | None] = list(src.queues) or [None]
            for queue in queues:
                if not self.policy.could_match(src.channel, queue):
                    where = f"queue {queue!r} of " if queue else ""
                    out.append(
                        f"sources[{i}] ({src.name}): no policy rule matches {where}channel "
                        f"{src.channel.value!r}; its contacts would have no targets — add a rule "
                        "(policy.rules) that matches it"
                    )
        return out


# -- loading ----------------------------------------------------------------------------


def _node_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at a pydantic error location."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if str(k.value) == str(part):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
            if node is not None:
                line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue  # pydantic's internal validator/union step names
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    skip = {
        "str",
        "float",
        "int",
        "timedelta",
        "ClockConfig",
        "DatabaseConfig",
        "literal['calendar']",
    }
    return tuple(
        p
        for p in loc
        if not (
            isinstance(p, str)
            and (p in skip or p.startswith(("function-", "union[", "list[", "literal[")))
        )
    )


# Checks one source's `kind` and `options`: problems as (key path under the source, message).
# The connector registry (sources/__init__.py) is one; config never imports the connectors.
SourceCheck = Callable[[str, Mapping[str, Any]], list[tuple[tuple[int | str, ...], str]]]


def _duplicate_keys(path: Path, root: yaml.Node | None) -> list[str]:
    """Keys given twice in one mapping: YAML loaders keep the last one silently, so a
    setting an operator believes in may not be the one in force."""
    found: list[str] = []

    def walk(node: yaml.Node | None, at: tuple[int | str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name in seen:
                    found.append(
                        f"{path}:{key.start_mark.line + 1}: {_path((*at, name))}: duplicate key "
                        f"(also on line {seen[name]}; YAML would keep only the last)"
                    )
                elif name is not None:
                    seen[name] = key.start_mark.line + 1
                walk(value, (*at, name if name is not None else "?"))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*at, i))

    walk(root, ())
    return found


def load_config(path: str | os.PathLike[str], check_source: SourceCheck | None = None) -> Config:
    """Read and validate a config. `check_source` validates each source's kind and options
    (the CLI and the runtime pass the connector registry's)."""
    """Load and validate a config file; raises ConfigError listing every problem found."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read config: {exc.strerror}"]) from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError([f"{at}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: the config must be a YAML mapping (keys: policy, sources, ...)"])
    duplicates = _duplicate_keys(p, root)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = list(duplicates)
        seen = set()
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see the README for the keys)"
            elif err["type"] == "missing":
                msg = "required key is missing"
            line = _node_line(root, loc)
            entry = f"{p}:{line}: {_path(loc)}: {msg}" if line else f"{p}: {_path(loc)}: {msg}"
            if entry not in seen:
                seen.add(entry)
                problems.append(entry)
        # and every source's problems too, not only those of the first section that failed
        raw = data.get("sources")
        for i, src in enumerate(raw if isinstance(raw, list) else []):
            if not (check_source and isinstance(src, dict) and isinstance(src.get("kind"), str)):
                continue
            options = src.get("options") or {}
            options = options if isinstance(options, dict) else {}
            for tail, msg in check_source(src["kind"], options):
                spot: tuple[int | str, ...] = ("sources", i, *tail)
                entry = f"{p}:{_node_line(root, spot)}: {_path(spot)}: {msg}"
                if entry not in seen:
                    seen.add(entry)
                    problems.append(entry)
        raise ConfigError(problems) from None
    found: list[str] = list(duplicates)
    calendars: dict[str, BusinessCalendar] = {}
    for name, cal in settings.calendars.items():
        try:
            calendars[name] = cal.build(name)
        except (CalendarError, ValueError) as exc:
            where: tuple[int | str, ...] = ("calendars", name)
            found.append(f"{p}:{_node_line(root, where)}: calendars.{name}: {exc}")
    rules: list[Rule] = []
    for i, rc in enumerate(settings.policy.rules):
        specs: list[TargetSpec] = []
        for tname, tc in rc.targets.items():
            where = ("policy", "rules", i, "targets", tname.value)
            clock: TargetClock = CONTINUOUS
            if isinstance(tc.clock, ClockConfig):
                if tc.clock.business not in calendars:
                    known = ", ".join(sorted(settings.calendars)) or "none defined"
                    found.append(
                        f"{p}:{_node_line(root, (*where, 'clock'))}: policy.rules[{i}].targets."
                        f"{tname.value}.clock.business: unknown calendar "
                        f"{tc.clock.business!r} (known: {known})"
                    )
                    continue
                clock = calendars[tc.clock.business]
            warn = tc.warn_before
            warn_td = tc.within * warn if isinstance(warn, float) else warn
            if warn_td is not None and not timedelta(0) < warn_td < tc.within:
                found.append(
                    f"{p}:{_node_line(root, (*where, 'warn_before'))}: policy.rules[{i}].targets."
                    f"{tname.value}.warn_before: {format_duration(warn_td)} is not shorter than "
                    f"within ({format_duration(tc.within)}) and longer than 0: the warning would "
                    "come at or before the start, or never (give less, or a share such as 25%)"
                )
            specs.append(
                TargetSpec(
                    tname,
                    tc.within,
                    clock,
                    warn_td,
                    frozenset(tc.pause_on) if tc.pause_on is not None else None,
                    frozenset(tc.fulfilled_by) if tc.fulfilled_by is not None else None,
                    tc.severity,
                    tc.at_risk,
                    rc.short_abandon,
                )
            )
        m = rc.match
        rules.append(
            Rule(
                rc.name,
                Match(
                    frozenset(m.channel) if m.channel else None,
                    frozenset(m.queue) if m.queue else None,
                    frozenset(m.priority) if m.priority else None,
                    frozenset(m.tier) if m.tier else None,
                    frozenset(m.tags),
                ),
                tuple(specs),
                rc.close_after,
            )
        )
    names = [s.name for s in settings.sources]
    for i, src in enumerate(settings.sources):
        if names.count(src.name) > 1:
            found.append(
                f"{p}:{_node_line(root, ('sources', i, 'name'))}: sources[{i}].name: "
                f"duplicate source name {src.name!r}"
            )
    for i, src in enumerate(settings.sources):
        for loc_tail, msg in check_source(src.kind, src.options) if check_source else ():
            where = ("sources", i, *loc_tail)
            found.append(f"{p}:{_node_line(root, where)}: {_path(where)}: {msg}")
    if found:
        raise ConfigError(found)
    pc = settings.policy
    policy = Policy(tuple(rules), pc.repeat_window, pc.short_abandon)
    return Config(str(p), settings, calendars, policy, pc.service_level.formula)


def load_calendars(path: str | os.PathLike[str]) -> dict[str, BusinessCalendar]:
    return load_config(path).calendars


def default_config_path() -> str:
    """--config default: $SLA_MONITOR_CONFIG, else config/sla-monitor.yaml."""
    return os.environ.get("SLA_MONITOR_CONFIG") or "config/sla-monitor.yaml"


__all__ = ["DEFAULT_DATABASE", "DEFAULT_LISTEN", "Config", "ConfigError", "load_config"]
