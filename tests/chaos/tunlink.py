"""A link with delay, loss and a rate cap between two network namespaces, for when the kernel
has no netem (nor fq, for EDT pacing): a TUN device in each namespace and this relay between them.

    ip netns exec A python -m tests.chaos.tunlink --a A --b B --delay-ms 20 --loss 2 --rate 200mbit

The relay opens the TUN device ``rt0`` in namespace A (where it starts), then enters namespace B
and opens ``rt0`` there, and forwards every IP packet each way: dropped with probability
``--loss`` percent, else queued behind the packets before it at ``--rate`` (a tail-drop queue of
``--queue-bytes``, as a router's), then delivered ``--delay-ms`` later. Both ends run the
kernel's own TCP, so each connection's congestion window reacts to its own losses over a
real round trip: what parallel streams are for. Prints {"event": "ready"} once forwarding,
then, on SIGTERM, {"event": "closed", "dropped": N, "forwarded": N} and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import json
import os
import random
import signal
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
DEVICE = "rt0"


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
    finally:
        os.close(fd)


def parse_rate(text: str) -> float:
    """Bytes per second from tc-style bits: 200mbit, 50mbit, 1gbit."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}
    for unit, scale in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale / 8
    return float(text) / 8


class Direction:
    """One way of the link: loss, then a queue drained at the rate, then the delay."""

    def __init__(self, args: argparse.Namespace, src: int, dst: int, rng: random.Random) -> None:
        self.loop = asyncio.get_running_loop()
        self.src, self.dst, self.rng = src, dst, rng
        self.loss = args.loss / 100
        self.delay_s = args.delay_ms / 1000
        self.rate = parse_rate(args.rate)
        self.queue_limit = args.queue_bytes
        self.free_at = 0.0  # when the rate queue will have sent everything in it
        self.dropped = 0
        self.forwarded = 0
        self.loop.add_reader(src, self.readable)

    def readable(self) -> None:
        for _ in range(256):  # bounded: other work gets the loop between bursts
            try:
                packet = os.read(self.src, 65536)
            except BlockingIOError:
                return
            now = self.loop.time()
            queued = max(0.0, self.free_at - now) * self.rate  # bytes waiting for the rate, not yet in flight
            if self.rng.random() < self.loss or queued + len(packet) > self.queue_limit:
                self.dropped += 1
                continue
            self.free_at = max(now, self.free_at) + len(packet) / self.rate
            self.loop.call_at(self.free_at + self.delay_s, self.deliver, packet)

    def deliver(self, packet: bytes) -> None:
        try:
            os.write(self.dst, packet)
            self.forwarded += 1
        except BlockingIOError:
            self.dropped += 1


async def relay(args: argparse.Namespace) -> None:
    a = open_tun(DEVICE)
    enter_netns(args.b)
    b = open_tun(DEVICE)
    rng = random.Random(args.seed)
    ways = [Direction(args, a, b, rng), Direction(args, b, a, rng)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"event": "ready"}), flush=True)
    await stop.wait()
    dropped, forwarded = sum(w.dropped for w in ways), sum(w.forwarded for w in ways)
    print(json.dumps({"event": "closed", "dropped": dropped, "forwarded": forwarded}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the namespace this relay starts in")
    ap.add_argument("--b", required=True, help="the other namespace")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="one way")
    ap.add_argument("--loss", type=float, default=2.0, help="percent of packets dropped, each way")
    ap.add_argument("--rate", default="200mbit", help="each way, tc units")
    ap.add_argument("--queue-bytes", type=int, default=256 * 1024, help="tail-drop queue in front of the rate")
    ap.add_argument("--seed", type=int, default=None)
    asyncio.run(relay(ap.parse_args()))


if __name__ == "__main__":
    main()
