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
- Machine or person: `mailclass.classify` (bounces, reports, out-of-office replies of
  every major mail system, bulk and no-reply senders; list mail is a person's by default,
  `list_mail: skip` to skip it). A team message that is automatic is an `auto_reply`, else
  an `agent_reply`. Automatic mail from outside is skipped and counted in
  `sla_events_skipped_total{reason}`; a bounce addressed to the team is the team's reply
  failing to reach the customer: counted as `reply_bounced` and logged with its thread.
- Ending a thread: a message of the thread appearing in `done_folders` (an Archive or Done
  folder the team moves answered mail to), or flagged with `done_keyword` in the inbox,
  solves the contact (`status_changed` solved, at the time the poll saw it); a later
  customer message reopens it.
- `occurred_at` is the message's INTERNALDATE (when the server received or stored it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import ssl
from collections import OrderedDict
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import getaddresses
from typing import Any, Literal

from pydantic import Field, model_validator

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.sources._oauth import AccessTokens, OAuth2Options
from sla_monitor.sources._secrets import SecretRef
from sla_monitor.sources.abc import (
    AuthFailed,
    PollResult,
    Problems,
    Rejected,
    Skipped,
    SourceContext,
    SourceError,
    SourceOptions,
    path_problem,
)
from sla_monitor.sources.mailclass import classify

log = logging.getLogger(__name__)
MAX_THREADS = 100_000  # Message-IDs remembered in the cursor for threading
MAX_DONE_FLAGS = 10_000  # flagged inbox messages remembered in the cursor
_SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs|antw)\s*(\[\d+\])?\s*:\s*)+", re.I)
_MSGID = re.compile(r"<[^<>\s]+>")
_THREAD_FIELDS = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID REFERENCES IN-REPLY-TO)]"


class ImapOptions(SourceOptions):
    host: str
    port: int | None = None  # default 993 (implicit TLS) or 143
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    ca_file: str | None = None  # to trust a private CA
    username: str
    password: SecretRef | None = None
    oauth2: OAuth2Options | None = None  # instead of a password (Microsoft 365, Google)
    inbox: str = "INBOX"
    sent: str = "auto"  # the \\Sent special-use folder, or a folder name
    extra_folders: list[str] = []  # e.g. an archive or BCC folder with the team's replies
    team_addresses: list[str] = []
    team_domains: list[str] = []
    list_mail: Literal["customer", "skip"] = "customer"  # List-Id / Precedence: list mail
    done_folders: list[str] = []  # a thread moved here is solved (e.g. Archive, Done)
    done_keyword: str | None = None  # a message flagged with this keyword solves its thread
    queue: str = "email"
    max_messages_per_poll: int = Field(500, gt=0)
    timeout: float = 30.0

    @model_validator(mode="after")
    def _one_way_in(self) -> ImapOptions:
        if (self.password is None) == (self.oauth2 is None):
            raise ValueError("give password, or oauth2 (Microsoft 365 and Google need OAuth)")
        return self

    def preflight(self) -> Problems:
        ca = path_problem(self.ca_file, "ca_file") if self.ca_file else []
        return [*super().preflight(), *ca]


def normalize_subject(subject: str) -> str:
    return _SUBJECT_PREFIX.sub("", subject or "").strip().lower()


class ImapSource:
    def __init__(self, ctx: SourceContext, options: ImapOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.team_addresses = {a.lower() for a in options.team_addresses}
        self.team_domains = {d.lower().lstrip("@") for d in options.team_domains}
        self.parser = BytesHeaderParser(policy=default_policy)
        self.tokens = AccessTokens(options.oauth2, options.timeout) if options.oauth2 else None

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
            if self.tokens is not None and o.oauth2 is not None:
                token = self.tokens.token()
                if o.oauth2.mechanism == "oauthbearer":
                    client.oauthbearer_login(o.username, token)
                else:
                    client.oauth2_login(o.username, token)
            else:
                assert o.password is not None
                client.login(o.username, o.password.read())
        except LoginError:
            client.shutdown()
            if self.tokens is not None:
                self.tokens.forget()  # revoked or expired early: ask for a new one next time
                how = f"OAuth token of {self.tokens.who()}"
            else:
                assert o.password is not None
                how = f"password from {o.password.describe()}"
            raise AuthFailed(f"IMAP login refused for {o.username} on {o.host} ({how})") from None
        except (AuthFailed, SourceError):
            client.shutdown()
            raise
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
    ) -> Event | Rejected | Skipped:
        msg = self.parser.parsebytes(header)
        verdict = classify(msg, self.options.list_mail)
        senders = getaddresses([str(msg.get("From", ""))])
        sender = senders[0][1].lower() if senders and senders[0][1] else ""
        if verdict.bounce:  # decided before anything else: a daemon is never the team
            return self._bounce(msg, folder, uid, threads)
        if not sender:
            return Skipped(verdict.reason or "no_sender")
        if not isinstance(internaldate, datetime):
            return Rejected("bad_timestamp", f"{folder} UID {uid}: no INTERNALDATE", "")
        when = internaldate if internaldate.tzinfo else internaldate.replace(tzinfo=UTC)
        from_team = self._is_team(sender)
        automatic = verdict.automatic
        if not from_team and automatic:
            # a customer's out-of-office, a receipt, a newsletter: asks nothing of the team
            return Skipped(verdict.reason or "automatic")
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
            # who on the team replied: the From display name, else the team address
            agent=(senders[0][0].strip() or sender) if kind is EventKind.AGENT_REPLY else None,
        )

    def _bounce(
        self, msg: EmailMessage, folder: str, uid: int, threads: OrderedDict[str, str]
    ) -> Skipped:
        """A delivery failure. Addressed to the team, it is the team's own mail coming back:
        the customer was never reached (the thread it belongs to is logged, where known)."""
        to = [a.lower() for _, a in getaddresses([str(msg.get("To", ""))]) if a]
        if not any(self._is_team(a) for a in to):
            return Skipped("bounce")
        refs = _MSGID.findall(f"{msg.get('In-Reply-To', '')} {msg.get('References', '')}")
        thread = next((threads[r] for r in refs if r in threads), None)
        log.warning(
            "source %s: a message of the team bounced (%s UID %d%s): the customer did not "
            "receive it",
            self.name,
            folder,
            uid,
            f", conversation {thread}" if thread else "",
        )
        return Skipped("reply_bounced")

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
            if not result.more:  # endings after every message they could end
                done: dict[str, Any] = state.get("done", {})
                for name in self.options.done_folders:
                    self._read_done_folder(client, name, done, threads, result, now)
                if self.options.done_keyword:
                    self._read_done_keyword(client, done, threads, result, now)
                state["done"] = done
        except SourceError:
            raise
        except Exception as exc:  # imaplib/imapclient errors: retry with back-off
            raise SourceError(f"IMAP error on {self.options.host}: {exc}") from None
        finally:
            try:
                client.logout()
            except Exception:
                client.shutdown()
        result.cursor = json.dumps(
            {"folders": folders, "threads": threads, "done": state.get("done", {})}
        )
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
                elif isinstance(event, Skipped):
                    result.skipped[event.reason] += 1
                else:
                    result.rejected.append(event)
                mark["last_uid"] = uid
        folders[name] = mark
        return budget - len(uids)

    # -- endings ----------------------------------------------------------------------------

    def _root(self, header: bytes, threads: OrderedDict[str, str]) -> str | None:
        msg = self.parser.parsebytes(header)
        ids = _MSGID.findall(str(msg.get("Message-ID", "")))
        refs = _MSGID.findall(f"{msg.get('References', '')} {msg.get('In-Reply-To', '')}")
        for mid in [*ids, *refs]:
            if mid in threads:
                return threads[mid]
        return refs[0] if refs else (ids[0] if ids else None)

    def _solved(self, event_id: str, root: str, now: datetime) -> Event:
        return Event(
            source=self.name,
            event_id=event_id,
            conversation_id=root,
            kind=EventKind.STATUS_CHANGED,
            occurred_at=now,
            channel=Channel.EMAIL,
            queue=self.options.queue,
            status=Status.SOLVED,
        )

    def _read_done_folder(
        self,
        client: Any,
        name: str,
        done: dict[str, Any],
        threads: OrderedDict[str, str],
        result: PollResult,
        now: datetime,
    ) -> None:
        """Messages moved into a done folder since the last poll solve their threads. A done
        folder seen for the first time is read from its end: what was archived before the
        monitor watched it says nothing about today's contacts."""
        info = client.select_folder(name, readonly=True)
        validity = int(info[b"UIDVALIDITY"])
        mark = done.get(f"folder:{name}")
        uids = sorted(client.search(["ALL"]))
        if mark is None or mark["uidvalidity"] != validity:
            done[f"folder:{name}"] = {"uidvalidity": validity, "last_uid": max(uids, default=0)}
            return
        new = [u for u in uids if u > mark["last_uid"]]
        if new:
            data = client.fetch(
                new, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID REFERENCES IN-REPLY-TO)]"]
            )
            for uid in new:
                header = _header_fields(data.get(uid, {}))
                root = self._root(header, threads)
                if root is not None:
                    result.events.append(self._solved(f"done:{name}:{validity}:{uid}", root, now))
            mark["last_uid"] = new[-1]

    def _read_done_keyword(
        self,
        client: Any,
        done: dict[str, Any],
        threads: OrderedDict[str, str],
        result: PollResult,
        now: datetime,
    ) -> None:
        """Messages in the inbox newly flagged with the done keyword solve their threads."""
        keyword = self.options.done_keyword
        assert keyword is not None
        info = client.select_folder(self.options.inbox, readonly=True)
        validity = int(info[b"UIDVALIDITY"])
        mark = done.get("keyword")
        if mark is None or mark["uidvalidity"] != validity:
            mark = done["keyword"] = {"uidvalidity": validity, "seen": []}
        seen = set(mark["seen"])
        flagged = set(client.search(["KEYWORD", keyword]))
        new = sorted(flagged - seen)
        if new:
            data = client.fetch(
                new, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID REFERENCES IN-REPLY-TO)]"]
            )
            for uid in new:
                root = self._root(_header_fields(data.get(uid, {})), threads)
                if root is not None:
                    result.events.append(
                        self._solved(f"flag:{keyword}:{validity}:{uid}", root, now)
                    )
        # still flagged ones stay remembered; an unflagged one may be flagged again later
        mark["seen"] = sorted(flagged)[-MAX_DONE_FLAGS:]

    def close(self) -> None:
        pass


def _header_fields(item: dict[bytes, Any]) -> bytes:
    """The header bytes of a FETCH BODY.PEEK[HEADER.FIELDS (...)] answer."""
    for key, value in item.items():
        if key.startswith(b"BODY[HEADER") and isinstance(value, bytes):
            return value
    return b""
