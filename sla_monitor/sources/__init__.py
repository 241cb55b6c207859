"""Connectors. Adding one: a module here with an options model and a factory, plus one
`register(...)` line below."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sla_monitor.sources.abc import Source, SourceContext, SourceFactory, SourceOptions


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
            out.append((("options", *err["loc"]), msg))
        return out
    return []


def build_source(context: SourceContext, kind: str, options: Mapping[str, Any]) -> Source:
    connector = REGISTRY[kind]
    return connector.factory(context, connector.options.model_validate(options))


def _register_builtin() -> None:
    from sla_monitor.sources import asterisk, chatwoot, demo, http_json, imap, jsonl, zendesk

    register("jsonl", jsonl.JsonlOptions, jsonl.JsonlSource)
    register("demo", demo.DemoOptions, demo.DemoSource)
    register("asterisk_queue_log", asterisk.AsteriskOptions, asterisk.AsteriskQueueLogSource)
    register("http_json", http_json.HttpJsonOptions, http_json.HttpJsonSource)
    register("zendesk", zendesk.ZendeskOptions, zendesk.ZendeskSource)
    register("imap", imap.ImapOptions, imap.ImapSource)
    register("chatwoot", chatwoot.ChatwootOptions, chatwoot.ChatwootSource)


_register_builtin()

__all__ = [
    "REGISTRY",
    "Source",
    "SourceContext",
    "build_source",
    "register",
    "validate_source_config",
]
