"""A loopback TCP proxy that misbehaves on purpose, for tests and by hand.

    python -m tests.chaos.proxy --target 127.0.0.1:9000 --reset-every 32M --stall-after 64M \\
        --stall-seconds 10 --flip-probability 1e-4 --rate 50M --delay-ms 5 --record wire.bin

Prints one JSON object per line on stdout: {"event": "listening", "port": N} first,
then two per connection ("connection", with its number, counted from 1, and its rate
cap; "closed", with the bytes it forwarded each way), one per fault injected ("reset",
"stall", "flip", "blackhole") and, with ``--tick``, one per second ("second", with the
bytes forwarded upstream in it). Serves connection after connection (so a client can
reconnect through it) until killed or --max-connections.

``--reset-at-frame TYPE`` resets a connection at the first rtransfer frame of that type coming
back from the server (its 13-byte header, type first, is not sealed), which it drops: the
receiver's DONE (9), say, lost on its way. With ``--max-resets``, only so many times.

Faults apply to every connection unless aimed at one: ``--rate`` caps each connection
on its own; ``--slow-connection N --slow-rate R`` caps connection N at R instead;
``--reset-connection N`` limits ``--reset-every`` to connection N; ``--blackhole-connection N
--blackhole-after B`` stops forwarding connection N after B bytes without closing it,
as a dead path does.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import IO


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


@dataclass
class Faults:
    reset_every: int = 0  # bytes sent client->server on one connection before it is reset
    stall_after: int = 0  # total bytes before the one stall
    stall_seconds: float = 0.0
    flip_probability: float = 0.0  # per forwarded read, either direction
    flip_after: int = 0  # bytes into each connection before flips start (spares the handshake)
    flip_direction: str = "both"  # "up" (client to server), "down", or "both"
    rate: int = 0  # bytes per second, each direction; 0: unlimited
    delay_s: float = 0.0
    seed: int | None = None
    slow_connection: int = 0  # this connection (counted from 1) gets slow_rate instead of rate
    slow_rate: int = 0
    reset_connection: int = 0  # 0: reset_every applies to every connection (but the first, with spare_first)
    spare_first: bool = False
    blackhole_connection: int = 0
    blackhole_after: int = 0
    max_resets: int = 0  # resets in all, over every connection (0: no limit)
    reset_at_frame: int = 0  # reset at the first frame of this type from the server (0: none)

    def for_connection(self, number: int) -> Faults:
        """The faults one connection sees."""
        return dataclasses.replace(
            self,
            rate=self.slow_rate if number == self.slow_connection else self.rate,
            reset_every=self.reset_every
            if self.reset_connection in (0, number) and not (self.spare_first and number == 1)
            else 0,
            blackhole_after=self.blackhole_after if number == self.blackhole_connection else 0,
        )


FRAME_HEADER = struct.Struct("!BIQ")  # rtransfer's: type, body length, check


class FrameScanner:
    """Where rtransfer's frames start in one direction of a connection, read by read."""

    def __init__(self) -> None:
        self.head = b""
        self.left = 0  # bytes of the current frame's body still to come

    def find(self, data: bytes, ftype: int) -> int | None:
        """The offset in ``data`` where a frame of ``ftype`` starts (0 if its header began in an
        earlier read), or None."""
        i = 0
        while i < len(data):
            if self.left:
                step = min(self.left, len(data) - i)
                self.left -= step
                i += step
                continue
            start = i - len(self.head)
            need = FRAME_HEADER.size - len(self.head)
            self.head += data[i : i + need]
            i += min(need, len(data) - i)
            if len(self.head) == FRAME_HEADER.size:
                kind, length, _ = FRAME_HEADER.unpack(self.head)
                self.head = b""
                if kind == ftype:
                    return max(start, 0)
                self.left = length
        return None


class Proxy:
    def __init__(self, target: tuple[str, int], faults: Faults, record: IO[bytes] | None) -> None:
        self.target = target
        self.faults = faults
        self.record = record
        self.rng = random.Random(faults.seed)
        self.total = 0
        self.stalled = False
        self.connections = 0
        self.up_bytes = 0  # client to server, all connections: what --tick reports each second
        self.resets = 0

    def say(self, event: str, **fields: object) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        faults = self.faults.for_connection(number)
        self.say("connection", number=self.connections, rate=faults.rate)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        sent = [0]
        reset = asyncio.Event()
        moved = {True: [0], False: [0]}  # bytes forwarded upstream, downstream
        pumps = [
            asyncio.ensure_future(self.pump(faults, c_reader, s_writer, sent, reset, True, moved[True])),
            asyncio.ensure_future(self.pump(faults, s_reader, c_writer, sent, reset, False, moved[False])),
        ]
        waiter = asyncio.ensure_future(reset.wait())
        done, _ = await asyncio.wait([*pumps, waiter], return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            for writer in (c_writer, s_writer):
                sock = writer.get_extra_info("socket")
                if sock is not None:  # RST, like a middlebox dropping the connection
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        else:
            await asyncio.wait(pumps, timeout=30)
        for task in (*pumps, waiter):
            task.cancel()
        self.say("closed", number=number, up_bytes=moved[True][0], down_bytes=moved[False][0])

    async def pump(
        self,
        f: Faults,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sent: list[int],
        reset: asyncio.Event,
        upstream: bool,
        forwarded: list[int],
    ) -> None:
        started = time.monotonic()
        moved = 0
        seen = 0
        frames = FrameScanner() if f.reset_at_frame and not upstream else None
        try:
            while data := await reader.read(256 * 1024):
                resets_left = not f.max_resets or self.resets < f.max_resets
                at = frames.find(data, f.reset_at_frame) if frames is not None and resets_left else None
                if at is not None:
                    self.resets += 1
                    writer.write(data[:at])
                    await writer.drain()
                    self.say("reset", at_frame=f.reset_at_frame)
                    reset.set()
                    return
                if upstream and f.reset_every and resets_left and sent[0] + len(data) >= f.reset_every:
                    self.resets += 1
                    keep = f.reset_every - sent[0]
                    writer.write(data[:keep])
                    await writer.drain()
                    self.say("reset", after_bytes=f.reset_every)
                    reset.set()
                    return
                if f.blackhole_after and seen + len(data) > f.blackhole_after:
                    self.say("blackhole", after_bytes=f.blackhole_after, upstream=upstream)
                    await reset.wait()  # forward nothing more, and keep the connection open
                    return
                seen += len(data)
                direction_ok = f.flip_direction == "both" or (f.flip_direction == "up") == upstream
                if (
                    f.flip_probability
                    and direction_ok
                    and seen > f.flip_after
                    and self.rng.random() < f.flip_probability
                ):
                    buf = bytearray(data)
                    bit = self.rng.randrange(len(buf) * 8)
                    buf[bit // 8] ^= 1 << (bit % 8)
                    data = bytes(buf)
                    self.say("flip", upstream=upstream)
                self.total += len(data)
                if upstream:
                    sent[0] += len(data)
                    self.up_bytes += len(data)
                if f.stall_after and not self.stalled and self.total >= f.stall_after:
                    self.stalled = True
                    self.say("stall", seconds=f.stall_seconds)
                    await asyncio.sleep(f.stall_seconds)
                if f.delay_s:
                    await asyncio.sleep(f.delay_s)
                if self.record is not None:
                    self.record.write(data)
                writer.write(data)
                await writer.drain()
                moved += len(data)
                forwarded[0] = moved
                if f.rate:
                    ahead = moved / f.rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except (ConnectionError, OSError):
            pass
        finally:
            if not reset.is_set():
                writer.close()


async def tick(proxy: Proxy) -> None:
    """One "second" event per second: the bytes forwarded client to server in it (for rate limits)."""
    start, reported, second = time.monotonic(), 0, 0
    while True:
        second += 1
        await asyncio.sleep(max(0.0, start + second - time.monotonic()))
        proxy.say("second", second=second, up_bytes=proxy.up_bytes - reported)
        reported = proxy.up_bytes


async def main(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    faults = Faults(
        parse_size(args.reset_every) if args.reset_every else 0,
        parse_size(args.stall_after) if args.stall_after else 0,
        args.stall_seconds,
        args.flip_probability,
        parse_size(args.flip_after) if args.flip_after else 0,
        args.flip_direction,
        parse_size(args.rate) if args.rate else 0,
        args.delay_ms / 1000,
        args.seed,
        slow_connection=args.slow_connection,
        slow_rate=parse_size(args.slow_rate) if args.slow_rate else 0,
        reset_connection=args.reset_connection,
        spare_first=args.spare_first,
        blackhole_connection=args.blackhole_connection,
        blackhole_after=parse_size(args.blackhole_after) if args.blackhole_after else 0,
        max_resets=args.max_resets,
        reset_at_frame=args.reset_at_frame,
    )
    record = open(args.record, "wb") if args.record else None  # noqa: SIM115 - closed below
    proxy = Proxy((host, int(port)), faults, record)
    server = await asyncio.start_server(proxy.handle, args.bind, args.listen_port)
    proxy.say("listening", port=server.sockets[0].getsockname()[1])
    ticker = asyncio.ensure_future(tick(proxy)) if args.tick else None
    deadline = time.monotonic() + args.max_seconds
    async with server:
        while time.monotonic() < deadline:
            if args.max_connections and proxy.connections >= args.max_connections:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5 if args.max_connections else 0)
    if ticker is not None:
        ticker.cancel()
    if record is not None:
        record.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--reset-every", help="reset each connection after this many client bytes (K/M/G)")
    ap.add_argument("--stall-after", help="stall once after this many bytes in all (K/M/G)")
    ap.add_argument("--stall-seconds", type=float, default=10.0)
    ap.add_argument("--flip-probability", type=float, default=0.0, help="flip one bit per read with this probability")
    ap.add_argument("--flip-after", help="flip only after this many bytes of each connection and direction")
    ap.add_argument("--flip-direction", choices=["up", "down", "both"], default="both")
    ap.add_argument("--rate", help="bandwidth cap of each connection, per direction, bytes/s (K/M/G)")
    ap.add_argument("--slow-connection", type=int, default=0, help="connection N (from 1) gets --slow-rate instead")
    ap.add_argument("--slow-rate", help="the slow connection's cap, bytes/s (K/M/G)")
    ap.add_argument("--reset-connection", type=int, default=0, help="apply --reset-every to connection N only")
    ap.add_argument("--spare-first", action="store_true", help="never reset the first connection")
    ap.add_argument("--blackhole-connection", type=int, default=0, help="stop forwarding connection N ...")
    ap.add_argument("--blackhole-after", help="... after this many bytes, keeping it open (K/M/G)")
    ap.add_argument("--max-resets", type=int, default=0, help="reset no more connections than this in all")
    ap.add_argument(
        "--reset-at-frame", type=int, default=0, help="reset at the first frame of this type from the server"
    )
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--record", help="write every forwarded byte, both directions, to this file")
    ap.add_argument("--tick", action="store_true", help="report the bytes forwarded upstream each second")
    ap.add_argument("--max-connections", type=int, default=0, help="exit after serving this many (0: no limit)")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="exit after this long in any case")
    asyncio.run(main(ap.parse_args()))
    sys.exit(0)
