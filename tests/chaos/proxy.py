"""A loopback TCP proxy for tests (and by hand): forwards one connection, optionally recording it.

    python -m tests.chaos.proxy --target 127.0.0.1:9000 --record wire.bin

Prints {"event": "listening", "port": N} once it listens; exits when the connection ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import IO


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: IO[bytes] | None) -> None:
    try:
        while data := await reader.read(1 << 16):
            if record is not None:
                record.write(data)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(listen_port: int, target: str, record_path: str | None) -> None:
    host, _, port = target.rpartition(":")
    record = open(record_path, "wb") if record_path else None  # noqa: SIM115 - closed below
    finished = asyncio.Event()

    async def on_client(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pump(c_reader, s_writer, record), pump(s_reader, c_writer, record))
        finished.set()

    server = await asyncio.start_server(on_client, "127.0.0.1", listen_port)
    print(json.dumps({"event": "listening", "port": server.sockets[0].getsockname()[1]}), flush=True)
    async with server:
        await finished.wait()
    if record is not None:
        record.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--record", help="append every byte, both directions, to this file")
    args = ap.parse_args()
    asyncio.run(main(args.listen_port, args.target, args.record))
    sys.exit(0)
