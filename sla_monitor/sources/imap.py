"""`imap`: an e-mail support mailbox over IMAP.

Reads the inbox for the customers' messages and the Sent folder (found by its `\\Sent`
special-use attribute, or named) plus optional extra folders (an archive or BCC folder)
for the team's replies. Incremental per folder by (UIDVALIDITY, last UID); a changed
UIDVALIDITY re-reads that folder from the start, and events keyed by Message-ID make the
re-read produce no duplicates. Only headers are fetched, never bodies.

- Thread: a reply joins the conversation of the first Message-ID in its `References`
  (the thread's root), else of its `In-Reply-To` (looked up through the messages seen),
  else — when it has neither — of the last message with the same subject (without
  Re:/Fwd:) and the same customer address; a message starting a thread is its own root.
- Team or customer: by the configured team addresses and domains.
- Machine or person (RFC 3834 and common practice): `Auto-Submitted` other than `no`,
  `X-Autoreply`, `X-Autorespond`, `Precedence: auto_reply|bulk|junk`, or Exchange's
  `X-MS-Exchange-Generated-Message-Source: Mailbox Rules Agent` mark a message as
  automatic. `X-Auto-Response-Suppress` alone does not (people's clients send it too).
  A team message that is automatic is an `auto_reply`, else an `agent_reply`; an
  automatic message from outside (a customer's out-of-office) is skipped.
- `occurred_at` is the message's INTERNALDATE (when the server received or stored it).
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections import OrderedDict
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import getaddresses
from typing import Any, Literal

from pydantic import Field

from sla_monitor.domain.events import Channel, Event, EventKind
from sla_monitor.sources.abc import (
    AuthFailed,
    PollResult,
    Rejected,
    SourceContext,
    SourceError,
    SourceOptions,
)
from sla_monitor.sources.secrets import SecretRef

MAX_THREADS = 100_000  # Message-IDs remembered in the cursor for threading
_SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs|antw)\s*(\[\d+\])?\s*:\s*)+", re.I)
_MSGID = re.compile(r"<[^<>\s]+>")


class ImapOptions(SourceOptions):
    host: str
    port: int | None = None  # default 993 (implicit TLS) or 143
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    ca_file: str | None = None  # to trust a private CA
    username: str
    password: SecretRef
    inbox: str = "INBOX"
    sent: str = "auto"  # the \\Sent special-use folder, or a folder name
    extra_folders: list[str] = []  # e.g. an archive or BCC folder with the team's replies
    team_addresses: list[str] = []
    team_domains: list[str] = []
    queue: str = "email"
    max_messages_per_poll: int = Field(500, gt=0)
    timeout: float = 30.0


def is_automatic(msg: EmailMessage) -> bool:
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and not auto.startswith("no"):
        return True
    if msg.get("X-Autoreply") is not None or msg.get("X-Autorespond") is not None:
        return True
    if str(msg.get("Precedence", "")).strip().lower() in ("auto_reply", "bulk", "junk"):
        return True
    source = str(msg.get("X-MS-Exchange-Generated-Message-Source", "")).strip().lower()
    return source == "mailbox rules agent"


def normalize_subject(subject: str) -> str:
    return _SUBJECT_PREFIX.sub("", subject or "").strip().lower()


class ImapSource:
    def __init__(self, ctx: SourceContext, options: ImapOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.team_addresses = {a.lower() for a in options.team_addresses}
        self.team_domains = {d.lower().lstrip("@") for d in options.team_domains}
        self.parser = BytesHeaderParser(policy=default_policy)

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> Any:
        from imapclient import IMAPClient  # imported here: only IMAP sources need it
        from imapclient.exceptions import LoginError

        o = self.options
        context = ssl.create_default_context(cafile=o.ca_file) if o.tls != "none" else None
        port = o.port or (993 if o.tls == "implicit" else 143)
        try:
            client = IMAPClient(
                o.host, port=port, ssl=o.tls == "implicit", ssl_context=context, timeout=o.timeout
            )
            if o.tls == "starttls":
                client.starttls(context)
        except (OSError, ssl.SSLError) as exc:
            raise SourceError(f"cannot connect to IMAP {o.host}:{port}: {exc}") from None
        client.normalise_times = False  # keep INTERNALDATE's own offset
        try:
            client.login(o.username, o.password.read())
        except LoginError:
            client.shutdown()
            raise AuthFailed(
                f"IMAP login refused for {o.username} on {o.host} "
                f"(password from {o.password.describe()})"
            ) from None
        return client

    def _sent_folder(self, client: Any) -> str | None:
        if self.options.sent != "auto":
            return self.options.sent
        from imapclient.imapclient import SENT

        found: str | None = client.find_special_folder(SENT)
        return found

    # -- mapping ----------------------------------------------------------------------------

    def _is_team(self, address: str) -> bool:
        address = address.lower()
        return address in self.team_addresses or address.rpartition("@")[2] in self.team_domains

    def _thread(
        self, msg: EmailMessage, own_id: str, customer: str | None, threads: OrderedDict[str, str]
    ) -> str:
        refs: list[str] = _MSGID.findall(str(msg.get("References", "")))
        root: str
        if refs:
            root = threads.get(refs[0], refs[0])
        else:
            parent: list[str] = _MSGID.findall(str(msg.get("In-Reply-To", "")))
            if parent:
                root = threads.get(parent[0], parent[0])
            else:
                key = f"subject:{normalize_subject(str(msg.get('Subject', '')))}|{customer}"
                root = (
                    threads.get(key, own_id)
                    if normalize_subject(str(msg.get("Subject", "")))
                    else own_id
                )
        threads[own_id] = root
        if customer:
            threads[f"subject:{normalize_subject(str(msg.get('Subject', '')))}|{customer}"] = root
        while len(threads) > MAX_THREADS:
            threads.popitem(last=False)
        return root

    def to_event(
        self,
        folder: str,
        uid: int,
        internaldate: Any,
        header: bytes,
        threads: OrderedDict[str, str],
    ) -> Event | Rejected | None:
        msg = self.parser.parsebytes(header)
        senders = getaddresses([str(msg.get("From", ""))])
        sender = senders[0][1].lower() if senders and senders[0][1] else ""
        if not sender:
            return Rejected(
                "missing_field",
                f"{folder} UID {uid}: no From address",
                header.decode(errors="replace")[:20000],
            )
        if not isinstance(internaldate, datetime):
            return Rejected("bad_timestamp", f"{folder} UID {uid}: no INTERNALDATE", "")
        when = internaldate if internaldate.tzinfo else internaldate.replace(tzinfo=UTC)
        from_team = self._is_team(sender)
        automatic = is_automatic(msg)
        if not from_team and automatic:
            return None  # a customer's out-of-office or a bounce asks nothing of the team
        if from_team:
            recipients = [
                a.lower()
                for _, a in getaddresses([str(msg.get("To", "")), str(msg.get("Cc", ""))])
                if a
            ]
            customer = next((a for a in recipients if not self._is_team(a)), None)
            kind = EventKind.AUTO_REPLY if automatic else EventKind.AGENT_REPLY
        else:
            customer, kind = sender, EventKind.CUSTOMER_MESSAGE
        ids = _MSGID.findall(str(msg.get("Message-ID", "")))
        own_id = (
            ids[0]
            if ids
            else "<"
            + hashlib.sha1(
                f"{folder}|{when.isoformat()}|{sender}|{msg.get('Subject', '')}".encode()
            ).hexdigest()
            + "@sla-monitor>"
        )
        conversation = self._thread(msg, own_id, customer, threads)
        return Event(
            source=self.name,
            event_id=own_id,
            conversation_id=conversation,
            kind=kind,
            occurred_at=when.astimezone(UTC),
            channel=Channel.EMAIL,
            queue=self.options.queue,
            customer_id=customer,
        )

    # -- polling ----------------------------------------------------------------------------

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        state = json.loads(cursor) if cursor else {}
        folders: dict[str, dict[str, int]] = state.get("folders", {})
        threads: OrderedDict[str, str] = OrderedDict(state.get("threads", {}))
        result = PollResult()
        budget = self.options.max_messages_per_poll
        client = self._connect()
        try:
            names = [self.options.inbox]
            sent = self._sent_folder(client)
            if sent is None:
                result.rejected.append(
                    Rejected(
                        "no_sent_folder",
                        f"{self.options.host}: no \\Sent special-use folder; "
                        "set `sent:` to the folder's name",
                        "",
                    )
                )
            names += [n for n in [sent, *self.options.extra_folders] if n and n not in names]
            for name in names:
                budget = self._read_folder(client, name, folders, threads, result, budget)
                if budget <= 0:
                    result.more = True
                    break
        except SourceError:
            raise
        except Exception as exc:  # imaplib/imapclient errors: retry with back-off
            raise SourceError(f"IMAP error on {self.options.host}: {exc}") from None
        finally:
            try:
                client.logout()
            except Exception:
                client.shutdown()
        result.cursor = json.dumps({"folders": folders, "threads": threads})
        if not result.more:
            result.watermark = now
        return result

    def _read_folder(
        self,
        client: Any,
        name: str,
        folders: dict[str, dict[str, int]],
        threads: OrderedDict[str, str],
        result: PollResult,
        budget: int,
    ) -> int:
        info = client.select_folder(name, readonly=True)
        validity = int(info[b"UIDVALIDITY"])
        mark = folders.get(name)
        if mark is None or mark["uidvalidity"] != validity:
            mark = {"uidvalidity": validity, "last_uid": 0}  # new folder, or a UIDVALIDITY reset
        uids = sorted(
            u for u in client.search(["UID", f"{mark['last_uid'] + 1}:*"]) if u > mark["last_uid"]
        )[:budget]
        if uids:
            data = client.fetch(uids, ["INTERNALDATE", "BODY.PEEK[HEADER]"])
            for uid in uids:
                item = data.get(uid, {})
                event = self.to_event(
                    name, uid, item.get(b"INTERNALDATE"), item.get(b"BODY[HEADER]", b""), threads
                )
                if isinstance(event, Event):
                    result.events.append(event)
                elif event is not None:
                    result.rejected.append(event)
                mark["last_uid"] = uid
        folders[name] = mark
        return budget - len(uids)

    def close(self) -> None:
        pass
