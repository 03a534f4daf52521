"""`python -m tests.harness.apiproxy --upstream URL --ca-file F --port 0`: run the proxy until SIGINT/SIGTERM.

Prints the proxy's URL as its first line (and the kubeconfig's path when asked for one), and the request summary
when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from tests.harness.apiproxy.proxy import ApiProxy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.apiproxy", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the API server's https:// URL")
    parser.add_argument("--ca-file", type=Path, required=True, help="CA bundle that verifies the API server")
    parser.add_argument(
        "--client-cert", type=Path, default=None, help="client certificate for requests without a token"
    )
    parser.add_argument("--client-key", type=Path, default=None, help="the client certificate's key")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="write a kubeconfig for the proxy here")
    parser.add_argument("--token", default=None, help="the bearer token the kubeconfig's user sends")
    args = parser.parse_args(argv)
    if (args.kubeconfig is None) != (args.token is None):
        parser.error("--kubeconfig and --token go together")
    return args


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with ApiProxy(
        args.upstream, ca_file=args.ca_file, client_cert=args.client_cert, client_key=args.client_key, port=args.port
    ) as proxy:
        print(proxy.url, flush=True)
        if args.kubeconfig is not None:
            print(f"kubeconfig: {proxy.write_kubeconfig(args.kubeconfig, args.token)}", flush=True)
        await stop.wait()
        print(proxy.requests.summary(), flush=True)


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
