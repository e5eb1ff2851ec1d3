"""Run mongoeco's MongoDB wire-protocol server in the foreground (the CI MongoDB tier).

mongoeco is an in-memory MongoDB emulator (Python 3.13+), good for command semantics, not
for performance. `.ci/run` starts this script in its own venv, waits for the port file,
pings the server with pymongo and exports ``TEST_MONGODB_URI``; SIGTERM stops it.

    .venv-mongo/bin/python tests/support/mongo_emulator.py --port-file PATH [--port 0]

Not imported by the test suite: it needs mongoeco, which the project venv does not have.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path


async def serve(host: str, port: int, port_file: Path) -> None:
    from mongoeco.engines.memory import MemoryEngine
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = AsyncMongoEcoProxyServer(engine=MemoryEngine(), host=host, port=port)
    address = await server.start()
    try:
        # Written only once the socket listens, and atomically, so a reader never sees
        # half a port number.
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(address.port))
        tmp.replace(port_file)
        print(f"mongoeco wire server on mongodb://{host}:{address.port}", flush=True)
        await stop.wait()
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: let the OS pick a free port")
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.port_file))


if __name__ == "__main__":
    main()
