"""A local server speaking the Asterisk Manager Interface as documented (banner,
`Action: Login` / `Ping` / `Logoff`, `Event:` blocks), scripted per test; loopback only."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

BANNER = b"Asterisk Call Manager/5.0.2\r\n"


def block(**fields: Any) -> bytes:
    return ("".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode()


class FakeAmi:
    def __init__(self, username: str, secret: str) -> None:
        self.username, self.secret = username, secret
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None
        self.logins = 0
        self.actions: list[dict[str, str]] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.sendall(BANNER)
        buffer = b""
        authed = False
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                raw, buffer = buffer.split(b"\r\n\r\n", 1)
                action = dict(
                    (k.strip(), v.strip())
                    for k, _, v in (line.partition(":") for line in raw.decode().split("\r\n"))
                )
                self.actions.append(action)
                aid = action.get("ActionID", "")
                kind = action.get("Action", "")
                if kind == "Login":
                    if (
                        action.get("Username") == self.username
                        and action.get("Secret") == self.secret
                    ):
                        authed = True
                        self.logins += 1
                        conn.sendall(
                            block(
                                Response="Success", ActionID=aid, Message="Authentication accepted"
                            )
                        )
                        self.conn = conn
                    else:
                        conn.sendall(
                            block(Response="Error", ActionID=aid, Message="Authentication failed")
                        )
                        conn.close()
                        return
                elif not authed:
                    conn.sendall(block(Response="Error", ActionID=aid, Message="Permission denied"))
                elif kind == "Ping":
                    conn.sendall(
                        block(
                            Response="Success",
                            ActionID=aid,
                            Ping="Pong",
                            Timestamp=f"{time.time():.6f}",
                        )
                    )
                elif kind == "Logoff":
                    conn.sendall(
                        block(Response="Goodbye", ActionID=aid, Message="Thanks for all the fish.")
                    )
                    if self.conn is conn:
                        self.conn = None
                    conn.close()
                    return

    def wait_connected(self, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while self.conn is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def emit(self, **fields: Any) -> None:
        """An event to the connected client (lost when none is: as with a real Asterisk)."""
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.sendall(block(Privilege="agent,all", **fields))

    def drop(self) -> None:
        """The connection dies (a network fault, an Asterisk restart)."""
        if self.conn is not None:
            with contextlib.suppress(OSError):  # the client may have gone already
                self.conn.shutdown(socket.SHUT_RDWR)
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self._stop = True
        self.drop()
        self.server.close()
