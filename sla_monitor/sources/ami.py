"""`asterisk_ami`: Asterisk call queues followed live over the Asterisk Manager Interface,
for a monitor that does not run on the PBX host.

Logs in over TCP (or TLS) with `Action: Login` and keeps the connection between polls; each
poll sends `Action: Ping` (so "no events" is told from "no connection") and reads what
arrived. The queue events become the same facts `queue_log` records, with the same ids, so
the two sources agree and de-duplicate each other:

  QueueCallerJoin     -> ENTERQUEUE (call_queued; CallerIDNum is the customer)
  AgentConnect        -> CONNECT (call_answered; MemberName is the agent)
  QueueCallerAbandon  -> ABANDON (call_abandoned)
  QueueCallerLeave    -> EXITWITHTIMEOUT when neither AgentConnect nor QueueCallerAbandon
                         follows within `leave_grace` (the caller left the queue unanswered)
  AgentComplete       -> COMPLETEAGENT / COMPLETECALLER (closed)

Times come from the events' `Timestamp` (`timestampevents = yes` in manager.conf), else the
time they were read. **The watermark stays honest across a dropped connection**: it is the
last moment the connection was known alive (less `leave_grace`); events Asterisk sent while
the connection was down are lost to AMI, so on reconnecting the monitor reads them back from
`queue_log` (`queue_log:` — the file, e.g. shared read-only over NFS, or a copy) for the
gap. Without it, each call still waiting at the drop is closed at the drop: judged by what
was knowable then — met, or cancelled if its deadline had not passed — never a breach the
gap may have hidden; calls that began and ended inside the gap are not seen (both logged).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from sla_monitor.sources._secrets import SecretRef
from sla_monitor.sources.abc import (
    AuthFailed,
    PollResult,
    Problems,
    Rejected,
    SourceContext,
    SourceError,
    SourceOptions,
    path_problem,
)
from sla_monitor.sources.asterisk import parse_queue_log_line

log = logging.getLogger(__name__)


class AmiOptions(SourceOptions):
    host: str
    port: int = 5038
    tls: bool = False  # AMI over TLS (usually port 5039)
    ca_file: str | None = None
    username: str
    secret: SecretRef
    queue_log: str | None = None  # read back the gap after a dropped connection
    leave_grace: float = Field(2.0, ge=0)  # seconds to wait for AgentConnect after a Leave
    timeout: float = 10.0

    def preflight(self) -> Problems:
        extra = path_problem(self.ca_file, "ca_file") if self.ca_file else []
        if self.queue_log:
            extra += path_problem(self.queue_log, "queue_log")
        return [*super().preflight(), *extra]


def _blocks(buffer: bytes) -> tuple[list[dict[str, str]], bytes]:
    """Complete AMI messages (header blocks ended by an empty line), and what is left."""
    out = []
    while b"\r\n\r\n" in buffer:
        raw, buffer = buffer.split(b"\r\n\r\n", 1)
        fields: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if fields:
            out.append(fields)
    return out, buffer


class AmiSource:
    def __init__(
        self, ctx: SourceContext, options: AmiOptions, clock: Callable[[], float] = time.time
    ) -> None:
        self.name = ctx.name
        self.options = options
        self.clock = clock
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.alive_at: float | None = None  # the last moment the connection was known up
        self.gap_from: float | None = None  # a drop not yet read back
        self.waiting: dict[str, str] = {}  # uniqueid -> queue, calls in a queue now
        self.leaving: dict[str, tuple[float, dict[str, str]]] = {}  # Leave without an end yet
        self.action = 0
        self._pending: list[dict[str, str]] = []  # events read while awaiting a reply
        # AMI does not replay: what the last poll returned is kept until its cursor comes
        # back, i.e. until the store took it (a failed commit hands the old cursor again)
        self.polls = 0
        self.unconfirmed: list[Any] = []

    # -- the connection -----------------------------------------------------------------

    def _send(self, **fields: str) -> str:
        assert self.sock is not None
        self.action += 1
        action_id = f"sla-{self.action}"
        text = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        self.sock.sendall(f"{text}ActionID: {action_id}\r\n\r\n".encode())
        return action_id

    def _connect(self) -> None:
        o = self.options
        try:
            raw = socket.create_connection((o.host, o.port), timeout=o.timeout)
            sock: socket.socket = raw
            if o.tls:
                context = ssl.create_default_context(cafile=o.ca_file)
                sock = context.wrap_socket(raw, server_hostname=o.host)
            banner = sock.recv(1024)
        except (OSError, ssl.SSLError) as exc:
            raise SourceError(f"cannot connect to AMI {o.host}:{o.port}: {exc}") from None
        if not banner.startswith(b"Asterisk Call Manager"):
            sock.close()
            raise SourceError(f"{o.host}:{o.port} is not an Asterisk Manager Interface")
        self.sock, self.buffer = sock, banner.split(b"\r\n", 1)[1] if b"\r\n" in banner else b""
        login = self._send(
            Action="Login", Username=o.username, Secret=o.secret.read(), Events="agent,call"
        )
        reply = self._reply(login)
        if reply.get("Response") != "Success":
            self._close()
            raise AuthFailed(
                f"AMI login refused for {o.username} on {o.host} "
                f"(secret from {o.secret.describe()}): {reply.get('Message', '')}"
            )

    def _close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def _read(self, wait: float) -> list[dict[str, str]]:
        """Every message that arrives within `wait` seconds (more while more come)."""
        assert self.sock is not None
        messages: list[dict[str, str]] = []
        deadline = time.monotonic() + wait
        while True:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("AMI closed the connection")
            found, self.buffer = _blocks(self.buffer + chunk)
            messages += found
        return messages

    def _reply(self, action_id: str) -> dict[str, str]:
        deadline = time.monotonic() + self.options.timeout
        while time.monotonic() < deadline:
            found, self.buffer = _blocks(self.buffer)
            for m in found:
                if m.get("ActionID") == action_id:
                    return m
                self._pending.append(m)
            assert self.sock is not None
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if ready:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("AMI closed the connection")
                self.buffer += chunk
        raise TimeoutError("AMI did not answer")

    # -- polling ------------------------------------------------------------------------

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        result = PollResult()
        if self.polls and cursor != f"ami:{self.polls}":
            result.events += self.unconfirmed  # not stored: handed over again
        self._pending = []
        if self.sock is None:
            self._connect()
            if self.gap_from is not None:
                self._read_back(self.gap_from, result)
        try:
            ping = self._send(Action="Ping")
            self._reply(ping)  # the connection is up now; events read meanwhile are kept
            self.alive_at = self.clock()
            messages = self._pending + self._read(0.05)
        except (OSError, TimeoutError, ConnectionResetError) as exc:
            messages = self._pending
            self._close()
            self.gap_from = self.alive_at or self.clock()
            log.warning(
                "source %s: AMI connection lost (%s); the watermark stays at %s until the gap "
                "is read back%s",
                self.name,
                exc,
                datetime.fromtimestamp(self.gap_from, UTC).isoformat(),
                " from queue_log" if self.options.queue_log else "",
            )
        for m in messages:
            self._event(m, result)
        self._settle_leaves(result, final=self.sock is None)
        if self.sock is None and not self.options.queue_log:
            self._close_waiting(result)
        if self.alive_at is not None:
            mark = self.alive_at - self.options.leave_grace
            result.watermark = datetime.fromtimestamp(mark, UTC)
        self.polls += 1
        result.cursor = f"ami:{self.polls}"
        self.unconfirmed = list(result.events)
        return result

    def _line(self, m: dict[str, str], verb: str, agent: str, *data: str) -> str:
        epoch = int(float(m.get("Timestamp") or self.clock()))
        return "|".join([str(epoch), m.get("Uniqueid", ""), m.get("Queue", ""), agent, verb, *data])

    def _add(self, line: str, result: PollResult) -> None:
        parsed = parse_queue_log_line(line, self.name, "AMI")
        if isinstance(parsed, Rejected):
            result.rejected.append(parsed)
        elif parsed is not None:
            result.events.append(parsed)

    def _event(self, m: dict[str, str], result: PollResult) -> None:
        name, uid = m.get("Event"), m.get("Uniqueid", "")
        if name == "QueueCallerJoin":
            self.waiting[uid] = m.get("Queue", "")
            caller = m.get("CallerIDNum", "")
            self._add(
                self._line(m, "ENTERQUEUE", "NONE", "", caller, m.get("Position", "")), result
            )
        elif name == "AgentConnect":
            self.waiting.pop(uid, None)
            self.leaving.pop(uid, None)
            agent = m.get("MemberName") or m.get("Interface") or "NONE"
            hold, ring = m.get("HoldTime", ""), m.get("RingTime", "")
            self._add(
                self._line(m, "CONNECT", agent, hold, m.get("DestUniqueid", ""), ring), result
            )
        elif name == "QueueCallerAbandon":
            self.waiting.pop(uid, None)
            self.leaving.pop(uid, None)
            position = m.get("Position", "")
            original, hold = m.get("OriginalPosition", ""), m.get("HoldTime", "")
            self._add(self._line(m, "ABANDON", "NONE", position, original, hold), result)
        elif name == "QueueCallerLeave" and uid in self.waiting:
            self.leaving[uid] = (float(m.get("Timestamp") or self.clock()), m)
        elif name == "AgentComplete":
            verb = "COMPLETECALLER" if m.get("Reason") == "caller" else "COMPLETEAGENT"
            agent = m.get("MemberName") or "NONE"
            hold, talk = m.get("HoldTime", ""), m.get("TalkTime", "")
            self._add(self._line(m, verb, agent, hold, talk), result)

    def _settle_leaves(self, result: PollResult, final: bool) -> None:
        """A caller who left the queue with no agent connecting timed out (or was sent on)."""
        for uid, (left_at, m) in list(self.leaving.items()):
            if final or self.clock() - left_at >= self.options.leave_grace:
                del self.leaving[uid]
                self.waiting.pop(uid, None)
                self._add(self._line(m, "EXITWITHTIMEOUT", "NONE", "", "", ""), result)

    def _close_waiting(self, result: PollResult) -> None:
        """No queue_log to read the gap back from: what was waiting ends at the drop."""
        assert self.gap_from is not None
        for uid, queue in self.waiting.items():
            log.warning(
                "source %s: call %s in %s was waiting when AMI dropped; closed at the drop",
                self.name,
                uid,
                queue,
            )
            line = f"{int(self.gap_from)}|{uid}|{queue}|NONE|COMPLETECALLER|||"
            self._add(line, result)
        self.waiting.clear()

    def _read_back(self, since: float, result: PollResult) -> None:
        """Reconnected after a drop: the gap's calls, from queue_log."""
        if self.options.queue_log:
            path = Path(self.options.queue_log)
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError as exc:
                raise SourceError(f"cannot read back the AMI gap from {path}: {exc}") from None
            for n, text in enumerate(lines, 1):
                epoch = text.split("|", 1)[0]
                if epoch.isdigit() and int(epoch) >= int(since) - 1:
                    parsed = parse_queue_log_line(text, self.name, f"{path}:{n}")
                    if parsed is not None and not isinstance(parsed, Rejected):
                        result.events.append(parsed)
                        if parsed.kind.value in ("call_answered", "call_abandoned"):
                            self.waiting.pop(parsed.conversation_id, None)
            log.info(
                "source %s: AMI back; the gap since %s read back from %s",
                self.name,
                datetime.fromtimestamp(since, UTC).isoformat(),
                path,
            )
        self.gap_from = None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self._send(Action="Logoff")
        self._close()
