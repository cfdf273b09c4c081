#!/usr/bin/env python3
"""A real SMTP server for autosign's delivery tests (aiosmtpd).

Usage: smtp_server.py --port PORT --out FILE [--auth USER:PASS]
                      [--busy-times N] [--tls-cert CERT --tls-key KEY --tls-mode tls|starttls]

Every accepted message is appended to FILE as one JSON line: the envelope
(mail_from, rcpt_tos), the authenticated login, and the message as a mail
client would read it (subject and body decoded, charset, transfer encoding,
Message-ID), plus the raw text. Behaviour by recipient local part:

  reject*  550 5.1.1 at RCPT (a permanent failure)
  busy*    451 4.3.0 at RCPT for the first N attempts (--busy-times), then accepted

Prints "READY <port>" on stdout once it listens. Exits when stdin closes
(the test that started it ended) or on SIGTERM. Exit status 3 when aiosmtpd
is not installed (`python3 -m pip install aiosmtpd`).
"""

import argparse
import json
import signal
import sys
import threading

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
except ImportError:  # pragma: no cover - reported to the test
    print("aiosmtpd is not installed (python3 -m pip install aiosmtpd)", file=sys.stderr)
    sys.exit(3)

import email
import email.policy


class Handler:
    def __init__(self, out, busy_times):
        self.out = out
        self.busy_times = busy_times
        self.busy_seen = {}
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: Recipient address rejected: mailbox unavailable" % address
        if local.startswith("busy"):
            with self.lock:
                n = self.busy_seen.get(address, 0) + 1
                self.busy_seen[address] = n
            if n <= self.busy_times:
                return "451 4.3.0 <%s>: try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body_part = msg.get_body(preferencelist=("plain",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "login": session.auth_data if session.authenticated else None,
            "to": str(msg.get("To", "")),
            "from": str(msg.get("From", "")),
            "subject": str(msg.get("Subject", "")),
            "message_id": str(msg.get("Message-ID", "")),
            "auto_submitted": str(msg.get("Auto-Submitted", "")),
            "content_type": msg.get_content_type(),
            "charset": (body_part.get_content_charset() if body_part is not None else None),
            "transfer_encoding": str(msg.get("Content-Transfer-Encoding", "")),
            "body": (body_part.get_content() if body_part is not None else ""),
            "raw_is_ascii": all(b < 128 for b in raw),
            "raw": raw.decode("utf-8", "replace"),
        }
        with self.lock:
            with open(self.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return "250 2.0.0 Ok: queued as T%d" % (hash(record["message_id"]) & 0xFFFFFF)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--auth", default="")
    p.add_argument("--busy-times", type=int, default=2)
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--tls-mode", default="", choices=["", "tls", "starttls"])
    a = p.parse_args()

    kwargs = {}
    if a.auth:
        user, _, password = a.auth.partition(":")

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
                and auth_data.password.decode() == password
            return AuthResult(success=ok, auth_data=user if ok else None)

        # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; with
        # implicit TLS the whole session is encrypted anyway.
        kwargs.update(authenticator=authenticator, auth_required=True,
                      auth_require_tls=(a.tls_mode == "starttls"))
    if a.tls_mode:
        import ssl
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        if a.tls_mode == "tls":
            kwargs["ssl_context"] = ctx
        else:
            kwargs.update(tls_context=ctx, require_starttls=True)

    controller = Controller(Handler(a.out, a.busy_times), hostname="127.0.0.1", port=a.port, **kwargs)
    controller.start()
    print("READY %d" % a.port, flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())

    def watch_stdin():
        try:
            sys.stdin.read()
        finally:
            done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    controller.stop()


if __name__ == "__main__":
    main()
