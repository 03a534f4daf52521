"""`python -m tests.harness.apiserver --port 0 --kubeconfig out.yaml`: run the emulated apiserver until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from tests.harness.apiserver.admission import crd_admission
from tests.harness.apiserver.server import ApiServerSettings, EmulatedApiServer

DEFAULT_CRDS = ("crds/agentruns.agentrun.dev.yaml", "crds/throttlepools.agentrun.dev.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.apiserver", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="write a kubeconfig for the server here")
    parser.add_argument(
        "--crd",
        action="append",
        default=None,
        help=f"CRD YAML file to install (repeatable; default: {', '.join(DEFAULT_CRDS)})",
    )
    parser.add_argument("--namespace", action="append", default=[], help="extra namespace to create (repeatable)")
    parser.add_argument("--no-admission", action="store_true", help="serve custom resources without schema validation")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    settings = ApiServerSettings(port=args.port, kubeconfig_path=args.kubeconfig, namespaces=tuple(args.namespace))
    crds = args.crd if args.crd is not None else [path for path in DEFAULT_CRDS if Path(path).exists()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    admission = None if args.no_admission else crd_admission
    async with EmulatedApiServer(crds, settings=settings, admission_factory=admission) as server:
        print(server.url, flush=True)
        print(f"kubeconfig: {server.kubeconfig_path}", flush=True)
        await stop.wait()
        print(server.requests.summary(), flush=True)


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
