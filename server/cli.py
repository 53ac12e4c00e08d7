"""`liveroom serve` and `liveroom token` (also `python -m server`)."""

from __future__ import annotations

import argparse
import errno
import sys

from server import logs
from server.abuse.tokens import Keyring
from server.config import ConfigError, add_serve_arguments, from_args, from_env
from server.wire import auth


def _assistant_check(argv: list[str]) -> int:
    """`liveroom assistant check`: offline, no server (server/assistant/check.py)."""
    from server.assistant import check

    parser = argparse.ArgumentParser(
        prog="liveroom assistant check", description="check a catalogue and score labelled questions"
    )
    check.add_arguments(parser)
    return check.run(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:2] == ["assistant", "check"]:
        return _assistant_check(args_in[2:])
    parser = argparse.ArgumentParser(prog="liveroom", description="Real-time live-room server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a server node")
    add_serve_arguments(serve)
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="json: one object a line"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="node processes sharing the port (SO_REUSEPORT) and one Redis (default 1)",
    )

    token = sub.add_parser("token", help="print a signed join token")
    token.add_argument("--room", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--name", help="display name (default: the user id)")
    token.add_argument("--role", choices=auth.ROLES, default="viewer")
    token.add_argument("--ttl", type=int, default=auth.DEFAULT_TTL, help="seconds (default 6 h)")
    token.add_argument("--secret", help="signing secret (default: LIVEROOM_SECRET or the dev secret)")

    assistant = sub.add_parser(
        "assistant",
        help="run the live-commerce assistant in a room",
        epilog="liveroom assistant check --catalogue X.yaml [--questions Q.jsonl] [--room-order]: "
        "check a catalogue and score labelled questions offline",
    )
    from server.assistant.runner import add_arguments

    add_arguments(assistant)

    args = parser.parse_args(argv)
    if args.command == "assistant":
        import asyncio

        from server.assistant.runner import run as run_assistant

        logs.configure("INFO", "text")
        try:
            return asyncio.run(run_assistant(args))
        except KeyboardInterrupt:
            return 0
    try:
        if args.command == "token":
            claims = {
                "room": args.room,
                "user": args.user,
                "role": args.role,
                "name": args.name,
                "ttl": args.ttl,
            }
            if args.secret:
                print(auth.mint(args.secret, **claims))
            else:  # the key every door checks first: LIVEROOM_SECRETS' first, else LIVEROOM_SECRET
                env = from_env()
                print(Keyring.from_config(env.secret, env.secret_old, env.secrets).mint(**claims))
            return 0
        config = from_args(args)
    except (ConfigError, ValueError) as exc:
        print(f"liveroom: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.log_level, args.log_format)
    if args.workers > 1:
        from server.workers import run_workers

        return run_workers(config, args.workers, sys.argv[1:] if argv is None else argv)
    if args.workers < 1:
        print("liveroom: --workers must be at least 1", file=sys.stderr)
        return 2

    import uvloop

    from server.app import run

    try:
        uvloop.run(run(config))
    except ConfigError as exc:
        print(f"liveroom: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a busy or forbidden port: one line, not a traceback
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        print(f"liveroom: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
