"""``compare.py --mode ssh``: pushes over ssh to a private sshd on a loopback port (tests/sshd.py;
root), each tool with the same ssh options, alternating, median. Every push writes into one destination,
removed after each: a destination kept from round to round keeps the memory its first copy got, and on a virtual
machine writing into memory the guest had not used lately cost 6-8x the copy into memory just freed. Kept, round 1's
order decided the table: scp first, rtransfer and rsync took 4.2-4.5 s to scp's 3.4; rtransfer first, scp 4.6 s to
rtransfer's 4.0 (bench/README.md, the sixth ssh pass). The rounds go through every order of the tools in turn, so
that no tool always follows the same one. Three measurements, each printed as a table:

1. one file of SIZE: rtransfer against ``scp`` and ``rsync -a -e ssh``;
2. a tree of FILES x 4 KiB: rtransfer against ``rsync -a -e ssh``;
3. 128 MiB at --limit-rate 16M, the far side killed -9 KILL_AT_S in: the sender starts ssh
   again by itself; its exit, whether the file is identical, and wire_bytes_sent over the file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.sshd import LoopbackSshd, Unavailable

KILL_AT_S = 3.0
HOST = "root@127.0.0.1"
Pushers = dict[str, Callable[[Path, Path], list[str]]]


def rtransfer_exe() -> str:
    """The installed entry point itself: a version manager's shim on PATH (pyenv's runs a shell
    script and ``pyenv exec``, ~50 ms) would add its own start-up, at both ends of ssh."""
    beside = Path(sys.executable).with_name("rtransfer")
    return str(beside) if beside.exists() else shutil.which("rtransfer") or "rtransfer"


def rtransfer_cmd() -> list[str]:
    return [rtransfer_exe()]


def pushers(sshd: LoopbackSshd) -> Pushers:
    rsh = sshd.rsh()
    remote = " ".join(rtransfer_cmd())
    return {
        "scp": lambda src, dst: ["scp", "-q", "-r", *sshd.options("-P"), str(src), f"{HOST}:{dst}/"],
        "rsync": lambda src, dst: ["rsync", "-a", "-e", rsh, str(src), f"{HOST}:{dst}/"],
        "rtransfer": lambda src, dst: [*rtransfer_cmd(), "send", str(src), f"{HOST}:{dst}/", "-e", rsh,
                                       "--remote-path", remote, "--quiet"],
    }  # fmt: skip


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def rounds(
    src: Path, root: Path, tools: dict[str, Callable[[Path, Path], list[str]]], args: argparse.Namespace
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in tools}
    orders = list(itertools.permutations(tools))
    for round_no in range(args.warmup + args.runs):
        for name in orders[round_no % len(orders)]:
            dst = root / "dst"
            dst.mkdir()
            seconds = timed(tools[name](src, dst))
            check = subprocess.run(
                ["rsync", "-a", "-n", "-i", "-c", f"{src}", f"{dst}/"], capture_output=True, text=True
            )
            shutil.rmtree(dst)
            assert name == "scp" or not check.stdout.strip(), f"{name}: {check.stdout[:300]}"
            if round_no >= args.warmup:
                times[name].append(seconds)
            print(f"round {round_no + 1} {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return times


def table(title: str, times: dict[str, list[float]]) -> None:
    """Each tool's median, and rtransfer's time over the tool's in the same round: the median of
    those ratios (paired: a round's noise falls on both) and their range."""
    print(f"\n{title}\n\n| tool | median s | rtransfer / tool, paired | range |\n|---|---|---|---|")
    for name, samples in times.items():
        ratios = [ours / theirs for ours, theirs in zip(times["rtransfer"], samples, strict=True)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"| {name} | {statistics.median(samples):.2f} | {statistics.median(ratios):.3f} | {spread} |")


def killed(sshd: LoopbackSshd, root: Path, write_random: Callable[[Path, int], None]) -> None:
    size = 128 << 20
    src, dst = root / "killed.bin", root / "dst-killed"
    write_random(src, size)
    cmd = pushers(sshd)["rtransfer"](src, dst)
    sender = subprocess.Popen([*cmd[:-1], "--limit-rate", "16M", "--json"], stdout=subprocess.PIPE)
    time.sleep(KILL_AT_S)  # the bench's schedule, as the issue sets it
    subprocess.run(["pkill", "-9", "-f", "--", f"--stdio --json --timeout 30 -- {dst}"], check=False)
    out, _ = sender.communicate(timeout=600)
    done = next(e for e in map(json.loads, out.splitlines()) if e.get("event") == "done")
    same = subprocess.run(["cmp", "-s", str(src), str(dst / src.name)]).returncode == 0
    print(f"\n128 MiB at --limit-rate 16M, the far side killed -9 {KILL_AT_S:g} s in\n")
    print("| exit | identical | reconnects | wire_bytes_sent | vs the file |\n|---|---|---|---|---|")
    sent = int(done["wire_bytes_sent"])
    print(f"| {sender.returncode} | {same} | {done['reconnects']} | {sent} | {sent / size:.3f} |")


def interpreter_start_ms(runs: int = 11) -> float:
    """``python -c pass`` with the interpreter that runs rtransfer at both ends: a ``.pth`` file
    in its site-packages (a sandbox's certificate hook imports certifi at every start) or an
    editable install's import hook slows each start, and rtransfer's far side starts in the
    first byte's path. Printed with the tables; the bench is meant to run from a virtual
    environment with the project installed as users install it (bench/README.md)."""
    python = Path(rtransfer_exe()).with_name("python")
    times = [timed([str(python if python.exists() else sys.executable), "-c", "pass"]) for _ in range(runs)]
    return statistics.median(times) * 1000


def ssh_main(args: argparse.Namespace, size: int, write_random: Callable[[Path, int], None]) -> int:
    print(
        f"rtransfer runs {rtransfer_exe()}; its interpreter starts in {interpreter_start_ms():.0f} ms (python -c pass)"
    )
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            root = Path(tmp)
            sshd = LoopbackSshd(root)
            try:
                src = root / "src.bin"
                write_random(src, size)
                table(f"Push of {args.size} over ssh, {args.runs} rounds", rounds(src, root, pushers(sshd), args))
                tree = root / "tree"
                for i in range(args.files):
                    (tree / f"d{i % 20}").mkdir(parents=True, exist_ok=True)
                    write_random(tree / f"d{i % 20}" / f"f{i}", 4096)
                tools = {k: v for k, v in pushers(sshd).items() if k != "scp"}
                table(f"Push of {args.files} x 4 KiB over ssh, {args.runs} rounds", rounds(tree, root, tools, args))
                killed(sshd, root, write_random)
            finally:
                sshd.close()
    except Unavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return 0
