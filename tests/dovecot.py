"""A throwaway Dovecot IMAP server on loopback (STARTTLS with a self-signed certificate)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .conftest import free_port

USER, PASSWORD = "support", "imap-test-password"


class Dovecot:
    def __init__(self, introspection_url: str | None = None) -> None:
        # given: tokens are also accepted (XOAUTH2, OAUTHBEARER), checked by POSTing them to
        # this RFC 7662 introspection endpoint (`passdb oauth2`, as a mail host does)
        self.introspection_url = introspection_url
        self.binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not Path(self.binary).exists():
            raise RuntimeError(
                "Dovecot is not installed: `apt-get install -y dovecot-imapd` "
                "(the README's test command does this)"
            )
        self.tmp = Path(tempfile.mkdtemp(prefix="sla-imap-"))
        os.chmod(self.tmp, 0o755)
        self.port = free_port()
        self.cert = self.tmp / "cert.pem"
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> Path:
        if os.geteuid() == 0:
            mail_user, login_user, internal_user = "dovecot", "dovenull", "dovecot"
        else:
            mail_user = login_user = internal_user = pwd.getpwuid(os.geteuid()).pw_name
        uid = pwd.getpwnam(mail_user).pw_uid
        mail = self.tmp / "mail"
        mail.mkdir()
        shutil.chown(mail, mail_user)
        (self.tmp / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(self.tmp / "key.pem"),
                "-out",
                str(self.cert),
            ],
            check=True,
            capture_output=True,
        )
        conf = self.tmp / "dovecot.conf"
        conf.write_text(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {self.tmp}/run
state_dir = {self.tmp}/state
log_path = {self.tmp}/dovecot.log
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = {min(uid, 100)}
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.tmp}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login{" xoauth2 oauthbearer" if self.introspection_url else ""}
{self._oauth_passdb()}passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.tmp}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={pwd.getpwnam(mail_user).pw_gid} home={mail}/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
  mailbox Archive {{
    auto = create
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""")
        return conf

    def _oauth_passdb(self) -> str:
        if not self.introspection_url:
            return ""
        ext = self.tmp / "dovecot-oauth2.conf.ext"
        ext.write_text(
            f"introspection_mode = post\nintrospection_url = {self.introspection_url}\n"
            "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
            "force_introspection = yes\n"
        )
        return (
            "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {ext}\n}}\n"
        )

    def start(self) -> None:
        conf = self._config()
        self.proc = subprocess.Popen(
            [self.binary, "-F", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                log = (
                    (self.tmp / "dovecot.log").read_text()
                    if (self.tmp / "dovecot.log").exists()
                    else ""
                )
                raise RuntimeError(f"dovecot exited: {out}\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dovecot did not start listening within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def client(self):  # type: ignore[no-untyped-def]
        import ssl

        from imapclient import IMAPClient

        context = ssl.create_default_context(cafile=str(self.cert))
        c = IMAPClient("127.0.0.1", port=self.port, ssl=False)
        c.starttls(context)
        c.login(USER, PASSWORD)
        return c
