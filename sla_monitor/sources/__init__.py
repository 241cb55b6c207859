"""Connectors. Adding one: a module here with an options model and a factory, plus one
`register(...)` line below."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sla_monitor.sources.abc import (
    Source,
    SourceContext,
    SourceFactory,
    SourceOptions,
    secrets_unreadable,
)


@dataclass(frozen=True)
class Connector:
    kind: str
    options: type[SourceOptions]
    factory: SourceFactory


REGISTRY: dict[str, Connector] = {}


def register(kind: str, options: type[SourceOptions], factory: SourceFactory) -> None:
    REGISTRY[kind] = Connector(kind, options, factory)


def validate_source_config(
    kind: str, options: Mapping[str, Any]
) -> list[tuple[tuple[int | str, ...], str]]:
    """Problems in one source's config, each as (key path under the source, message)."""
    connector = REGISTRY.get(kind)
    if connector is None:
        return [(("kind",), f"unknown source kind {kind!r} (known: {', '.join(sorted(REGISTRY))})")]
    try:
        connector.options.model_validate(options)
    except ValidationError as exc:
        out: list[tuple[tuple[int | str, ...], str]] = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown option"
            elif err["type"] == "missing":
                msg = "required option is missing"
            elif err["type"] == "model_type" and "SecretRef" in msg:
                msg = (
                    "a secret is given as {env: VARIABLE} or {file: /path/to/file}, "
                    "never written in the config"
                )
            elif err["type"] == "model_type":
                msg = "should be a mapping of keys to values"
            out.append((("options", *err["loc"]), msg))
        return out
    return []


def preflight_source(
    kind: str, options: Mapping[str, Any]
) -> list[tuple[tuple[int | str, ...], str]]:
    """What `run` will need of one source and can be checked without side effects (its
    secrets readable, its files there), after the options themselves are valid."""
    problems = validate_source_config(kind, options)
    if problems:
        return problems
    return REGISTRY[kind].options.model_validate(options).preflight()


def secrets_of_source(
    kind: str, options: Mapping[str, Any]
) -> list[tuple[tuple[int | str, ...], str]]:
    """Only the secrets (`run` refuses to start without them; a missing file is a source
    that is down, reported as such, as it may appear later)."""
    problems = validate_source_config(kind, options)
    if problems:
        return problems
    return secrets_unreadable(REGISTRY[kind].options.model_validate(options))


def build_source(context: SourceContext, kind: str, options: Mapping[str, Any]) -> Source:
    connector = REGISTRY[kind]
    return connector.factory(context, connector.options.model_validate(options))


def _register_builtin() -> None:
    from sla_monitor.sources import (
        ami,
        asterisk,
        chatwoot,
        demo,
        freshdesk,
        front,
        helpscout,
        http_json,
        imap,
        intercom,
        jsonl,
        taskrouter,
        zendesk,
    )

    register("jsonl", jsonl.JsonlOptions, jsonl.JsonlSource)
    register("demo", demo.DemoOptions, demo.DemoSource)
    register("asterisk_queue_log", asterisk.AsteriskOptions, asterisk.AsteriskQueueLogSource)
    register("asterisk_ami", ami.AmiOptions, ami.AmiSource)
    register("http_json", http_json.HttpJsonOptions, http_json.HttpJsonSource)
    register("zendesk", zendesk.ZendeskOptions, zendesk.ZendeskSource)
    register("imap", imap.ImapOptions, imap.ImapSource)
    register("chatwoot", chatwoot.ChatwootOptions, chatwoot.ChatwootSource)
    register("freshdesk", freshdesk.FreshdeskOptions, freshdesk.FreshdeskSource)
    register("helpscout", helpscout.HelpScoutOptions, helpscout.HelpScoutSource)
    register("front", front.FrontOptions, front.FrontSource)
    register("intercom", intercom.IntercomOptions, intercom.IntercomSource)
    register("taskrouter", taskrouter.TaskRouterOptions, taskrouter.TaskRouterSource)


_register_builtin()

__all__ = [
    "REGISTRY",
    "Source",
    "SourceContext",
    "build_source",
    "register",
    "validate_source_config",
]
