#!/usr/bin/python3
"""A small SMTP server for the SMTP carrier's tests (aiosmtpd).

It listens on 127.0.0.1 only (never another address), prints one JSON line
`{"port": N}` on stdout once it accepts connections, and stores every message
it accepts as one JSON file in --dir (written under a temporary name, then
renamed): the envelope, how the session was protected and authenticated, and
the parsed message (decoded subject, plain and HTML parts, headers).

It answers by the recipient's local part (without a "+tag", so that
rate421+7@... answers like rate421@... and a test can tell its messages
apart), so a test chooses the reply:

    fail550@...   550 5.1.1 mailbox unavailable (at RCPT)
    fail451@...   451 4.3.0 local error (at RCPT)
    fail421@...   421 4.3.2 service not available (at RCPT)
    rate421@...   421 4.7.0 too many connections (at RCPT)
    rate451@...   451 4.7.1 rate limit exceeded (at RCPT)
    slow@...      the DATA reply waits 60 s (a test kills the server meanwhile)

anything else is accepted; --refuse "451 4.3.0 ..." answers every RCPT with
that reply instead (a whole server that fails). For fault tests:
--transient-rate P answers 451 4.3.0 to a random share P (0..1) of the other
RCPTs (--seed N makes the draw repeatable), and --data-delay-ms N holds every
DATA reply N ms (a slow server; a client that gives up first has its message
dropped, not stored). Each stored message says when its DATA arrived
("received_at", Unix seconds). The port is --port N (0: any free one).
Options: --tls-cert/--tls-key offer STARTTLS
(required with --require-starttls) or, with --implicit-tls, speak TLS from the
first byte; --auth USER:PASSWORD requires AUTH (PLAIN/LOGIN, over TLS only).

It is test scaffolding: it never relays a message anywhere.
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import random
import ssl
import sys
import time
import uuid

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

REPLIES = {
    "fail550": "550 5.1.1 Mailbox unavailable",
    "fail451": "451 4.3.0 Local error in processing",
    "fail421": "421 4.3.2 Service not available",
    "rate421": "421 4.7.0 Too many connections, slow down",
    "rate451": "451 4.7.1 Rate limit exceeded, try again later",
}
# The reply to --transient-rate's share of RCPTs.
TRANSIENT = REPLIES["fail451"]


def local_part(address):
    """The local part, lower-cased, without its "+tag"."""
    return address.split("@", 1)[0].split("+", 1)[0].lower()


class Handler:
    def __init__(
        self, directory, implicit_tls, refuse, transient_rate, data_delay, rng
    ):
        self.directory = directory
        self.implicit_tls = implicit_tls
        self.refuse = refuse
        self.transient_rate = transient_rate
        self.data_delay = data_delay
        self.rng = rng

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.refuse or REPLIES.get(local_part(address))
        if reply is None and self.rng.random() < self.transient_rate:
            reply = TRANSIENT
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        received_at = time.time()
        if any(local_part(r) == "slow" for r in envelope.rcpt_tos):
            await asyncio.sleep(60)
        if self.data_delay > 0:
            await asyncio.sleep(self.data_delay)
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        plain = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        if self.implicit_tls:
            tls = "implicit"
        elif session.ssl is not None:
            tls = "starttls"
        else:
            tls = "none"
        login = None
        if isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": tls,
            "peer_port": session.peer[1],
            "received_at": received_at,
            "auth_login": login,
            "content_type": msg.get_content_type(),
            "subject": str(msg["subject"]),
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "message_id": str(msg["message-id"]),
            "date": str(msg["date"]),
            "plain": plain.get_content() if plain is not None else None,
            "html": html.get_content() if html is not None else None,
        }
        name = uuid.uuid4().hex
        tmp = os.path.join(self.directory, "." + name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, os.path.join(self.directory, name + ".json"))
        return "250 2.0.0 Message accepted for delivery"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dir", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--require-starttls", action="store_true")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--auth", help="USER:PASSWORD")
    p.add_argument("--refuse", help="the reply to every RCPT, e.g. '451 4.3.0 Busy'")
    p.add_argument(
        "--transient-rate",
        type=float,
        default=0.0,
        help="the share (0..1) of RCPTs answered 451 4.3.0 at random",
    )
    p.add_argument("--seed", type=int, help="seeds --transient-rate's draw")
    p.add_argument(
        "--data-delay-ms",
        type=int,
        default=0,
        help="holds every DATA reply this long",
    )
    args = p.parse_args()
    if not 0.0 <= args.transient_rate <= 1.0:
        p.error("--transient-rate must be within 0..1")
    if args.data_delay_ms < 0:
        p.error("--data-delay-ms must not be negative")

    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)

    authenticator = None
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            # handled=False: aiosmtpd answers 535 itself on a failure.
            return AuthResult(
                success=ok, handled=False, auth_data=auth_data if ok else None
            )

    handler = Handler(
        args.dir,
        args.implicit_tls,
        args.refuse,
        args.transient_rate,
        args.data_delay_ms / 1000.0,
        random.Random(args.seed),
    )

    def factory():
        return SMTP(
            handler,
            hostname="watchword-test-smtp",
            tls_context=None if args.implicit_tls else context,
            require_starttls=args.require_starttls,
            authenticator=authenticator,
            auth_required=authenticator is not None,
            auth_require_tls=True,
        )

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            factory,
            host="127.0.0.1",
            port=args.port,
            ssl=context if args.implicit_tls else None,
            reuse_address=True,
        )
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
