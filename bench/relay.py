"""``compare.py --mode relay``: through the magic-wormhole transit relay in a small internet of
network namespaces (tests/chaos/internet.py; root). Three measurements, each printed as a table:

1. NAT to NAT, SIZE: rtransfer against a raw byte pump through the same relay (a client that
   writes the relay's line, waits for ``ok`` and ``sendfile``s the file, against one that reads
   it into a file), alternating, wall time from the first start to the last exit, median.
2. One side public, the other behind NAT, both given --relay: the share of the file's bytes the
   relay carried (counted by the proxy in front of it), with either side public.
3. NAT to NAT at --limit-rate, the relay killed -9 KILL_AT_S in and back KILL_FOR_S later: both
   exit 0, the file identical, and the bytes sent into the relay over both its lives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos import internet
from tests.chaos.netns import Unavailable, in_ns

KILL_AT_S = 3.0
KILL_FOR_S = 3.0
PUMP = r"""
import os, socket, sys
host, port, token, side, role, path = sys.argv[1:]
s = socket.create_connection((host, int(port)))
s.sendall(f"please relay {token} for side {side}\n".encode())
line = b""
while not line.endswith(b"\n"):
    line += s.recv(1)
assert line == b"ok\n", line
if role == "send":
    with open(path, "rb") as f:
        s.sendfile(f)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
else:
    with open(path, "wb") as f:
        while chunk := s.recv(1 << 20):
            f.write(chunk)
        s.close()
"""


def rtransfer(ns: str, *args: str) -> subprocess.Popen[bytes]:
    exe = [sys.executable, "-m", "rtransfer"]
    return subprocess.Popen(in_ns(ns, *exe, *args, "--json"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def code_of(receiver: subprocess.Popen[bytes]) -> str:
    assert receiver.stdout is not None
    return str(json.loads(receiver.stdout.readline())["code"])


def done_of(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    assert proc.stdout is not None
    events = [json.loads(line) for line in proc.stdout.read().splitlines()]
    proc.wait(timeout=600)
    return next(e for e in events if e.get("event") == "done")


def run_rtransfer(net: internet.Internet, src: Path, out: Path, relay: str, rx_ns: str = "", tx_ns: str = "") -> float:
    started = time.perf_counter()
    rx = rtransfer(rx_ns or net.home_b, "recv", str(out), "--relay", relay, "--overwrite")
    code = code_of(rx)
    tx = rtransfer(tx_ns or net.home_a, "send", str(src), "--relay", relay, "--code", code)
    sent, received = done_of(tx), done_of(rx)
    elapsed = time.perf_counter() - started
    if not (sent["ok"] and received["ok"] and tx.returncode == 0 and rx.returncode == 0):
        raise RuntimeError(f"rtransfer failed: {sent} {received}")
    return elapsed


def run_pump(net: internet.Internet, src: Path, dst: Path) -> float:
    token = os.urandom(32).hex()
    host, port = net.bare_relay_address.split(":")
    started = time.perf_counter()
    procs = [
        subprocess.Popen(in_ns(ns, sys.executable, "-c", PUMP, host, port, token, side, role, str(path)))
        for ns, side, role, path in ((net.home_b, "b" * 16, "recv", dst), (net.home_a, "a" * 16, "send", src))
    ]
    codes = [p.wait(timeout=600) for p in procs]
    elapsed = time.perf_counter() - started
    if any(codes) or dst.stat().st_size != src.stat().st_size:
        raise RuntimeError(f"pump failed: {codes}")
    return elapsed


def digest(path: Path) -> str:
    h = hashlib.blake2b()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def nat_to_nat(net: internet.Internet, root: Path, args: argparse.Namespace, size: int) -> None:
    src = root / "src.bin"
    out = root / "out"
    out.mkdir()
    times: dict[str, list[float]] = {"pump": [], "rtransfer": []}
    for round_no in range(args.warmup + args.runs):
        order = ["pump", "rtransfer"] if round_no % 2 == 0 else ["rtransfer", "pump"]
        for tool in order:
            dst = out / "src.bin"
            seconds = (
                run_pump(net, src, dst) if tool == "pump" else run_rtransfer(net, src, out, net.bare_relay_address)
            )
            assert digest(dst) == digest(src), f"{tool}: not identical"
            dst.unlink()
            if round_no >= args.warmup:
                times[tool].append(seconds)
            print(f"round {round_no + 1} {tool}: {seconds:.2f} s", file=sys.stderr, flush=True)
    pump = statistics.median(times["pump"])
    print(f"\nNAT to NAT through the relay, {args.size}, both start-ups included, median of {args.runs}\n")
    print("| tool | median s | MiB/s | vs pump |\n|---|---|---|---|")
    for tool, samples in times.items():
        med = statistics.median(samples)
        print(f"| {tool} | {med:.2f} | {size / med / (1 << 20):.1f} | {med / pump:.2f} |")


def one_side_public(net: internet.Internet, root: Path, args: argparse.Namespace, size: int) -> None:
    src, out = root / "src.bin", root / "out"
    print(f"\nOne side public, the other behind NAT, both given --relay, {args.size}\n")
    print("| public side | seconds | bytes into the relay | share of the file |\n|---|---|---|---|")
    for public in ("receiver", "sender"):
        net.start_proxy()
        rx_ns, tx_ns = (net.public, net.home_a) if public == "receiver" else (net.home_a, net.public)
        seconds = run_rtransfer(net, src, out, net.relay_address, rx_ns=rx_ns, tx_ns=tx_ns)
        into, _ = net.stop_proxy()
        assert digest(out / "src.bin") == digest(src)
        (out / "src.bin").unlink()
        print(f"| {public} | {seconds:.2f} | {into} | {into / size:.4%} |")


def relay_killed(net: internet.Internet, root: Path, write_random: Callable[[Path, int], None]) -> None:
    size = 128 << 20
    src, out = root / "killed.bin", root / "out"
    write_random(src, size)
    net.start_proxy()
    rx = rtransfer(net.home_b, "recv", str(out), "--relay", net.relay_address, "--overwrite")
    code = code_of(rx)
    tx = rtransfer(net.home_a, "send", str(src), "--relay", net.relay_address, "--code", code, "--limit-rate", "16M")
    time.sleep(KILL_AT_S)  # the bench's own schedule, as the issue sets it
    net.kill_relay()
    time.sleep(KILL_FOR_S)
    net.start_relay()
    sent, received = done_of(tx), done_of(rx)
    into, connections = net.stop_proxy()
    same = digest(out / "killed.bin") == digest(src)
    killed = f"the relay killed -9 {KILL_AT_S:g} s in, back {KILL_FOR_S:g} s later"
    print(f"\n128 MiB at --limit-rate 16M, NAT to NAT, {killed}\n")
    print("| exit (send, recv) | identical | reconnects (send, recv) | bytes into the relay | vs the file |")
    print("|---|---|---|---|---|")
    print(
        f"| {tx.returncode}, {rx.returncode} | {same} | {sent['reconnects']}, {received['reconnects']} | "
        f"{into} ({connections} connections) | {into / size:.3f} |"
    )


def relay_main(args: argparse.Namespace, size: int, write_random: Callable[[Path, int], None]) -> int:
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp, internet.small_internet() as net:
            root = Path(tmp)
            write_random(root / "src.bin", size)
            net.start_relay()
            nat_to_nat(net, root, args, size)
            one_side_public(net, root, args, size)
            relay_killed(net, root, write_random)
    except Unavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return 0
