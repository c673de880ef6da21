"""Run the simulated cluster as its own process: `python -m kubesim --help`.

Once everything listens it prints one JSON line on stdout, for the parent to read:

    {"pid": 4242, "apiserver": "http://127.0.0.1:41234", "port": 41234,
     "apps": {"production": {"url": "http://127.0.0.1:41240", "port": 41240}}}

and it runs until SIGTERM or SIGINT, then closes every server and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from contextlib import ExitStack
from typing import Any

from kubesim.apiserver import ApiServer
from kubesim.app import SimApp
from kubesim.controller import DeploymentController


def _app_spec(value: str) -> tuple[str, int]:
    name, _, port = value.partition(":")
    if not name or (port and not port.isdigit()):
        raise argparse.ArgumentTypeError(f"--app takes NAME or NAME:PORT, not {value!r}")
    return name, int(port or 0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubesim", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="API server port (default: any free)")
    parser.add_argument("--controller", choices=["auto", "manual"], default="auto")
    parser.add_argument("--rollout-delay", type=float, default=0.0, help="seconds a rollout takes")
    parser.add_argument(
        "--time-factor", type=float, default=1.0, help="scales progressDeadlineSeconds"
    )
    parser.add_argument(
        "--app",
        type=_app_spec,
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="run a simulated app (repeatable); controlled at /_sim/apps/NAME on the API server",
    )
    parser.add_argument(
        "--strict-namespaces", action="store_true", help="404 on creates in unknown namespaces"
    )
    return parser.parse_args(argv)


def _add_app_routes(server: ApiServer, app: SimApp) -> None:
    def control(body: Any, _: dict[str, str]) -> tuple[int, Any]:
        return 200, app.control(body or {})

    server.add_control_route("GET", f"/_sim/apps/{app.name}", lambda *_: (200, app.state()))
    server.add_control_route("POST", f"/_sim/apps/{app.name}", control)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    with ExitStack() as stack:
        server = stack.enter_context(ApiServer(args.port, strict_namespaces=args.strict_namespaces))
        stack.enter_context(
            DeploymentController(
                server,
                mode=args.controller,
                rollout_delay=args.rollout_delay,
                time_factor=args.time_factor,
            )
        )
        apps = {}
        for name, port in args.app:
            app = stack.enter_context(SimApp(port, name=name, apiserver=server))
            _add_app_routes(server, app)
            apps[name] = {"url": app.url, "port": app.port}
        ready = {"pid": os.getpid(), "apiserver": server.url, "port": server.port, "apps": apps}
        print(json.dumps(ready), flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
