"""``compare.py --mode punch``: two homes behind NAT punching through to each other (--stun), in
the namespace internet of tests/chaos/internet.py (root; coturn and the transit relay). Five
measurements, each printed as a table:

1. Routers that drop unsolicited packets, and routers that answer them with RST: RUNS runs of
   SIZE each way. How many went direct, the relay's share of the bytes (counted by the proxy in
   front of it), and how long the first byte waited: the sender's start to its ``start`` event,
   against a --no-direct run of the same round (paired).
2. A random-port NAT on one side: the transfer stays on the relay; the first byte's wait against
   --no-direct, paired by round.
3. 512 MiB punched against the same transfer through the same routers with a port forward to
   the receiver, both start-ups included, alternating, median; the punch's set-up apart: the
   sender's start to its ``moved`` event, against its start to ``start`` with the forward. Here
   the sides meet at the relay itself, as users do: the proxy is a TCP end of its own, and its
   delayed ACKs would hold what the relay holds for them (Nagle) longer than a peer does.
4. A path that appears APPEAR_AT_S into a relayed 512 MiB transfer at --limit-rate 16M (the
   routers drop everything between the homes until then): where it ends, the relay's share, the
   wire bytes against the file.
5. The direct path cut CUT_AT_S into 128 MiB at 16M with --timeout 5 on both sides: back on the
   relay, exits, identical, wire bytes sent against the file plus two chunks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay import digest

from tests.chaos import internet
from tests.chaos.netns import Unavailable, in_ns

APPEAR_AT_S = 5.0
CUT_AT_S = 3.0
FORWARD_PORT = 7474
CHUNK = 8 << 20


@dataclass
class Side:
    """An rtransfer process whose --json events are kept with the time each arrived."""

    proc: subprocess.Popen[bytes]
    started: float
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    seen: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def run(cls, ns: str, *args: str) -> Side:
        started = time.perf_counter()
        proc = subprocess.Popen(
            in_ns(ns, sys.executable, "-m", "rtransfer", *args, "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        side = cls(proc, started)
        threading.Thread(target=side._read, daemon=True).start()
        return side

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            with self.seen:
                self.events.append((time.perf_counter(), json.loads(line)))
                self.seen.notify_all()
        with self.seen:
            self.events.append((time.perf_counter(), {"event": "exit"}))
            self.seen.notify_all()

    def wait(self, name: str, timeout_s: float = 300.0) -> tuple[float, dict[str, Any]]:
        """The first ``name`` event: seconds since the start, and the event."""
        with self.seen:
            found = self.seen.wait_for(lambda: self._first(name) or self._first("exit"), timeout_s)
            event = self._first(name)
            if event is None:
                raise RuntimeError(f"no {name!r} event: {found}")
            return event[0] - self.started, event[1]

    def _first(self, name: str) -> tuple[float, dict[str, Any]] | None:
        return next((e for e in self.events if e[1].get("event") == name), None)

    def done(self) -> dict[str, Any]:
        _, event = self.wait("done")
        if self.proc.wait(timeout=600) != 0 or not event["ok"]:
            errors = [e for _, e in self.events if e.get("event") == "error"]
            raise RuntimeError(f"rtransfer failed: {errors or event}")
        return event


@dataclass
class Run:
    seconds: float  # from the first start to the last exit
    first_byte_s: float  # the sender's start to its ``start`` event
    moved_s: float | None  # the sender's start to its first ``moved`` event
    back_s: float | None  # ... to its second (back on the relay)
    sent: dict[str, Any]
    received: dict[str, Any]
    relayed: int  # bytes into the relay, by the proxy


def relayed(
    net: internet.Internet,
    src: Path,
    out: Path,
    *extra: str,
    sender_in: str = "a",
    sending: tuple[str, ...] = (),
    during: Callable[[Side], None] | None = None,
    proxy: bool = True,
) -> Run:
    """One transfer through the relay, the receiver in the other home. Behind its proxy, which
    counts the bytes into the relay; without it (timings), as the sides say."""
    homes = {"a": net.home_a, "b": net.home_b}
    relay = net.relay_address if proxy else net.bare_relay_address
    if proxy:
        net.start_proxy()
    started = time.perf_counter()
    rx = Side.run(homes["b" if sender_in == "a" else "a"], "recv", str(out), "--relay", relay, *extra)
    _, listening = rx.wait("listening")
    tx = Side.run(homes[sender_in], "send", str(src), "--relay", relay, "--code", listening["code"], *extra, *sending)
    if during is not None:
        during(tx)
    sent, received = tx.done(), rx.done()
    seconds = time.perf_counter() - started
    into = net.stop_proxy()[0] if proxy else sent["relay_bytes"] + received["relay_bytes"]
    first_byte, _ = tx.wait("start")
    moves = [at - tx.started for at, e in tx.events if e.get("event") == "moved"]
    return Run(seconds, first_byte, (moves or [None])[0], (moves[1:] or [None])[0], sent, received, into)


def check(src: Path, out: Path) -> None:
    got = out / src.name
    if digest(got) != digest(src):
        raise RuntimeError("not identical")
    got.unlink()


def both_kinds(net: internet.Internet, root: Path, runs: int, size: int) -> None:
    src, out = root / "src.bin", root / "out"
    print(f"\n{runs} runs of {size >> 20} MiB each way, both homes behind NAT, --stun twice on both sides\n")
    print("| routers | sender in | direct | relay's share (max) | first byte wait, s (median, max) |")
    print("| --- | --- | --- | --- | --- |")
    for kind in ("drop", "rst"):
        for side in ("a", "b"):
            net.router(side, kind)
        for sender_in in ("a", "b"):
            direct, shares, waits = 0, [], []
            for n in range(runs):
                punched = relayed(net, src, out, *net.stun_args, sender_in=sender_in)
                check(src, out)
                plain = relayed(net, src, out, "--no-direct", sender_in=sender_in)
                check(src, out)
                direct += punched.sent["path"] == "direct"
                shares.append(punched.relayed / size)
                waits.append(punched.first_byte_s - plain.first_byte_s)
                print(f"{kind} {sender_in} {n}: {punched.sent['path']} {waits[-1]:+.3f} s", file=sys.stderr, flush=True)
            print(
                f"| {kind} | home {sender_in.upper()} | {direct}/{runs} | {max(shares):.3%} |"
                f" {statistics.median(waits):+.3f}, {max(waits):+.3f} |"
            )
    for side in ("a", "b"):
        net.router(side, "rst")


def random_port(net: internet.Internet, root: Path, runs: int, size: int) -> None:
    src, out = root / "src.bin", root / "out"
    net.router("b", "random")
    paths, waits = [], []
    for _ in range(runs):
        tried = relayed(net, src, out, *net.stun_args)
        check(src, out)
        plain = relayed(net, src, out, "--no-direct")
        check(src, out)
        paths.append(tried.sent["path"])
        waits.append(tried.first_byte_s - plain.first_byte_s)
    net.router("b", "rst")
    print(f"\nHome B's router maps at random, {runs} runs of {size >> 20} MiB, --stun against --no-direct\n")
    print("| on the relay, identical | first byte later than --no-direct, s (median, max) |\n| --- | --- |")
    print(f"| {paths.count('relay')}/{runs} | {statistics.median(waits):+.3f}, {max(waits):+.3f} |")


def forwarded(net: internet.Internet, src: Path, out: Path) -> tuple[float, float]:
    """The receiver listening behind a port forward, the sender dialing it: the seconds from the
    first start to the last exit, and the sender's start to its ``start`` event."""
    started = time.perf_counter()
    rx = Side.run(net.home_b, "recv", str(out), "--listen", f"0.0.0.0:{FORWARD_PORT}", "--overwrite")
    _, listening = rx.wait("listening")
    tx = Side.run(
        net.home_a, "send", str(src), f"{internet.ROUTER_WAN['b']}:{FORWARD_PORT}", "--code", listening["code"]
    )
    tx.done(), rx.done()
    return time.perf_counter() - started, tx.wait("start")[0]


def punched_vs_forward(net: internet.Internet, root: Path, args: argparse.Namespace, write: Any) -> None:
    size = 512 << 20
    src, out = root / "big.bin", root / "out"
    write(src, size)
    net.forward(FORWARD_PORT)
    print(f"\n512 MiB NAT to NAT, punched against a port forward to the receiver, median of {args.runs}\n")
    print(
        "| routers | punched, s | forward, s | paired ratio (median, max) | start to moved, s | to start (forward), s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for kind in ("drop", "rst"):
        for side in ("a", "b"):
            net.router(side, kind)
        net.forward(FORWARD_PORT)
        rounds = [one_round(net, src, out, n) for n in range(args.warmup + args.runs)][args.warmup :]
        ratios = [p / f for p, _, f, _ in rounds]
        punched, moved, forward, start = (statistics.median(r[i] for r in rounds) for i in range(4))
        print(
            f"| {kind} | {punched:.2f} | {forward:.2f} | {statistics.median(ratios):.3f}, {max(ratios):.3f} |"
            f" {moved:.3f} | {start:.3f} |",
            flush=True,
        )
    src.unlink()


def one_round(net: internet.Internet, src: Path, out: Path, n: int) -> tuple[float, float, float, float]:
    """Punched and forwarded, in turn (who goes first alternates): the punched run's seconds and
    its sender's start to ``moved``, the forwarded run's seconds and its sender's start to ``start``."""
    results: dict[str, tuple[float, float]] = {}
    for tool in ("punched", "forward") if n % 2 == 0 else ("forward", "punched"):
        if tool == "punched":
            run = relayed(net, src, out, *net.stun_args, proxy=False)  # the relay as users meet it
            if run.sent["path"] != "direct" or run.moved_s is None:
                raise RuntimeError(f"not punched: {run.sent}")
            results[tool] = (run.seconds, run.moved_s)
        else:
            results[tool] = forwarded(net, src, out)
        check(src, out)
    (p_s, moved), (f_s, f_start) = results["punched"], results["forward"]
    print(f"round {n + 1}: punched {p_s:.2f} s (moved at {moved:.3f} s), forward {f_s:.2f} s", file=sys.stderr)
    return p_s, moved, f_s, f_start


def appears(net: internet.Internet, root: Path, write: Any) -> None:
    size = 512 << 20
    src, out = root / "big.bin", root / "out"
    write(src, size)
    net.cut(True)

    def lift(tx: Side) -> None:
        time.sleep(APPEAR_AT_S)  # the bench's own schedule, as the issue sets it
        net.cut(False)

    run = relayed(net, src, out, *net.stun_args, sending=("--limit-rate", "16M"), during=lift)
    check(src, out)
    src.unlink()
    print(f"\nA direct path that appears {APPEAR_AT_S:g} s into 512 MiB at --limit-rate 16M, relayed until then\n")
    print("| ends on | moved at, s | relay's share | wire bytes sent / file |\n| --- | --- | --- | --- |")
    print(
        f"| {run.sent['path']} | {run.moved_s or 0:.2f} | {run.relayed / size:.1%} |"
        f" {run.sent['wire_bytes_sent'] / size:.4f} |"
    )


def cut(net: internet.Internet, root: Path, write: Any) -> None:
    size = 128 << 20
    src, out = root / "cut.bin", root / "out"
    write(src, size)

    cut_at: list[float] = []

    def cut_it(tx: Side) -> None:
        tx.wait("moved")
        time.sleep(max(0.0, CUT_AT_S - (time.perf_counter() - tx.started)))
        net.cut(True)
        cut_at.append(time.perf_counter() - tx.started)

    try:
        run = relayed(net, src, out, *net.stun_args, "--timeout", "5", sending=("--limit-rate", "16M"), during=cut_it)
    finally:
        net.cut(False)
    same = digest(out / src.name) == digest(src)
    (out / src.name).unlink()
    src.unlink()
    wire = run.sent["wire_bytes_sent"]
    print(f"\nThe direct path cut {CUT_AT_S:g} s into 128 MiB at --limit-rate 16M, --timeout 5 on both sides\n")
    print("| ends on | identical | reconnects | back on the relay after the cut, s | wire bytes sent / file |", end="")
    print(" bound: file + 2 chunks |\n| --- | --- | --- | --- | --- | --- |")
    bound = (size + 2 * CHUNK) / size
    back = f"{run.back_s - cut_at[0]:.2f}" if run.back_s is not None and cut_at else "never"
    print(f"| {run.sent['path']} | {same} | {run.sent['reconnects']} | {back} | {wire / size:.4f} | {bound:.4f} |")


def punch_main(args: argparse.Namespace, size: int, write_random: Callable[[Path, int], None]) -> int:
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp, internet.small_internet() as net:
            root = Path(tmp)
            (root / "out").mkdir()
            write_random(root / "src.bin", size)
            net.start_relay()
            net.start_stun()
            parts = args.parts.split(",") if args.parts else ["kinds", "random", "forward", "appears", "cut"]
            if "kinds" in parts:
                both_kinds(net, root, args.punch_runs, size)
            if "random" in parts:
                random_port(net, root, max(3, args.punch_runs // 2), size)
            if "forward" in parts:
                punched_vs_forward(net, root, args, write_random)
            if "appears" in parts:
                appears(net, root, write_random)
            if "cut" in parts:
                cut(net, root, write_random)
    except Unavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return 0
