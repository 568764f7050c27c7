#!/usr/bin/env python3
"""Side-by-side loopback benchmark: rtransfer vs nc, socat and rsync on the same data.

Runs every tool in each round, rotating the order, after warm-up rounds, and
reports median wall time, the ratio to nc, and each side's peak memory. On a
shared, noisy machine only these ratios from one run mean much.

    python bench/compare.py --size 1G --runs 5              # one file, file to file
    python bench/compare.py --mode pipe --size 4G --runs 5  # head -c SIZE /dev/zero | send -  ->  recv - > /dev/null
    python bench/compare.py --mode tree --files 10000 --size 4K --dirs 50 --runs 3  # vs tar c | nc | tar x, rsync -a
    python bench/compare.py --mode tree --tree /usr/lib/python3.11 --runs 3        # a real tree, checked with rsync -c
    python bench/compare.py --mode tiny --size 1K --runs 11  # one small file, both start-ups, vs nc and scp (sshd)
    python bench/compare.py --mode lossy --size 32M --runs 5 # vs nc between network namespaces, 2% loss, 200mbit (root)
    python bench/compare.py --mode rate --size 100M --limit-rate 20M --runs 3  # bytes per second through the proxy
    python bench/compare.py --mode streams --size 256M --rate 20M --slow-rate 2M --runs 3  # --streams 1 vs 8, capped
    python bench/compare.py --mode sync --size 256M --rate 50M --runs 3  # a changed file re-sent, vs rsync, capped
    python bench/compare.py --mode compress --size 256M --rate 30M --runs 3  # log lines, random, --compress or not
    python bench/compare.py --mode relay --size 512M --runs 3  # through the transit relay, NAT to NAT (root; relay.py)
    python bench/compare.py --mode punch --size 64M --punch-runs 20 --runs 5  # NAT to NAT punched (root; punch.py)
    python bench/compare.py --mode ssh --size 1G --files 2000 --runs 5  # pushes over ssh vs scp, rsync -e ssh (ssh.py)
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from punch import punch_main
from relay import relay_main
from ssh import rtransfer_exe, ssh_main

import tests.sshd  # relay.py put the repository on sys.path

READY_TIMEOUT_S = 20.0
STARTUP_RUNS = 11


BASELINE: list[str] = []  # --baseline: another rtransfer to run beside this one, as "rtransfer-base"


def baseline_checkout(commit: str, root: Path) -> list[str]:
    """This repository at ``commit``, run by the installed entry point with that checkout first on the path."""
    tree = root / f"base-{commit}"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), commit], check=True, capture_output=True)
    import compileall

    compileall.compile_dir(str(tree / "rtransfer"), quiet=1)
    atexit.register(subprocess.run, ["git", "worktree", "remove", "--force", str(tree)], capture_output=True)
    return ["env", f"PYTHONPATH={tree}", rtransfer_exe()]


def byte_compile_rtransfer() -> None:
    """An editable install under PYTHONDONTWRITEBYTECODE recompiles every start; `pip install .` would not."""
    import compileall

    import rtransfer

    compileall.compile_dir(str(Path(rtransfer.__file__).parent), quiet=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, netns: str | None = None) -> None:
    """Poll the kernel's socket table (never connect: nc would take that as the transfer)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    ss = ["ss", "-Hltn", f"sport = :{port}"]
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "netns", "exec", netns, *ss] if netns else ss, capture_output=True, text=True
        ).stdout
        if out.strip():
            return
        time.sleep(0.01)
    raise RuntimeError(f"nothing listened on port {port}")


class Measured:
    """A command run under GNU time, which reports the peak RSS of that command alone.

    (A child's own ru_maxrss would include the pages it shared with this Python
    process between fork and exec.)
    """

    def __init__(self, cmd: list[str], **popen: object) -> None:
        fd, self._rss_file = tempfile.mkstemp(prefix="rss-")
        os.close(fd)
        self.name = Path(cmd[0]).name
        self.proc = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", self._rss_file, *cmd], **popen)  # type: ignore[call-overload]
        self.cpu_s = 0.0  # user + system seconds, once waited for

    def wait(self) -> tuple[int, int]:
        """Exit status and peak RSS in bytes (and ``cpu_s``)."""
        rc = self.proc.wait()
        words = Path(self._rss_file).read_text().split()
        os.unlink(self._rss_file)
        try:
            self.cpu_s = float(words[-2]) + float(words[-1])
            return rc, int(words[-3]) * 1024
        except (IndexError, ValueError):
            return rc, 0


@dataclass
class Sample:
    seconds: float
    recv_rss: int
    send_rss: int
    recv_cpu_s: float = 0.0  # user + system CPU of each side
    send_cpu_s: float = 0.0


@dataclass
class Tool:
    name: str
    run: Callable[[Path, Path], Sample]
    samples: list[Sample] = field(default_factory=list)


def against_baseline(tools: list[Tool], results: dict[str, object]) -> None:
    """--baseline: this rtransfer's time over the baseline's, round by round (the pairs ran side by
    side, so the machine's noise falls on both), and their median."""
    named = {t.name: t for t in tools}
    if "rtransfer" not in named or "rtransfer-base" not in named:
        return
    pairs = zip(named["rtransfer"].samples, named["rtransfer-base"].samples, strict=True)
    ratios = sorted(new.seconds / old.seconds for new, old in pairs)
    results["paired_ratio_to_baseline"] = {
        "median": round(statistics.median(ratios), 3),
        "all": [round(r, 3) for r in ratios],
    }
    print(
        f"\nrtransfer / rtransfer-base, paired by round: median {statistics.median(ratios):.3f}"
        f" (from {ratios[0]:.3f} to {ratios[-1]:.3f})"
    )


def pair(
    recv_cmd: list[str],
    send_cmd: Callable[[int], list[str]],
    ready: Callable[[subprocess.Popen[bytes]], int],
    recv_stdout: object = subprocess.PIPE,
    send_stdin: object = None,
) -> Sample:
    """Start the receiver, wait until ``ready`` gives its port, then time the sender and both exits."""
    return pair_started(Measured(recv_cmd, stdout=recv_stdout, stderr=subprocess.DEVNULL), send_cmd, ready, send_stdin)


def pair_started(
    receiver: Measured,
    send_cmd: Callable[[int], list[str]],
    ready: Callable[[subprocess.Popen[bytes]], int],
    send_stdin: object = None,
) -> Sample:
    try:
        port = ready(receiver.proc)
        for stream in (receiver.proc.stdout, receiver.proc.stderr):
            if stream is not None:  # events after the first one still need a reader (a tree has thousands)
                threading.Thread(target=stream.read, daemon=True).start()
        started = time.perf_counter()
        sender = Measured(send_cmd(port), stdin=send_stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        send_rc, send_rss = sender.wait()
        recv_rc, recv_rss = receiver.wait()
        elapsed = time.perf_counter() - started
    finally:
        if receiver.proc.returncode is None:
            receiver.proc.kill()
            receiver.proc.wait()
    if send_rc or recv_rc:
        raise RuntimeError(f"{receiver.name} failed: sender {send_rc}, receiver {recv_rc}")
    return Sample(elapsed, recv_rss, send_rss, receiver.cpu_s, sender.cpu_s)


def listening_on(port: int, netns: str | None = None) -> Callable[[subprocess.Popen[bytes]], int]:
    def ready(_: subprocess.Popen[bytes]) -> int:
        wait_listening(port, netns)
        return port

    return ready


def nc_tool(src: Path, dst: Path) -> Sample:
    port = free_port()
    with open(dst, "wb") as out, open(src, "rb") as inp:
        return pair(
            ["nc", "-N", "-l", "127.0.0.1", str(port)],
            lambda p: ["nc", "-N", "127.0.0.1", str(p)],
            listening_on(port),
            recv_stdout=out,
            send_stdin=inp,
        )


def socat_tool(src: Path, dst: Path) -> Sample:
    port = free_port()
    return pair(
        ["socat", "-u", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", f"CREATE:{dst}"],
        lambda p: ["socat", "-u", f"OPEN:{src}", f"TCP:127.0.0.1:{p}"],
        listening_on(port),
    )


def rtransfer_listening(receiver: subprocess.Popen[bytes]) -> int:
    """rtransfer says when it listens and on which port: no polling needed."""
    assert receiver.stdout is not None
    for line in receiver.stdout:  # warnings (e.g. for --no-encrypt) may come first
        event = json.loads(line)
        if event["event"] == "listening":
            return int(event["port"])
    raise RuntimeError("rtransfer recv exited before listening")


def console_listening(receiver: subprocess.Popen[bytes]) -> int:
    """Without --json, the receiver's first line on stderr says where it listens."""
    assert receiver.stderr is not None
    for line in receiver.stderr:
        found = re.search(rb"listening on \S+:(\d+)", line)
        if found:
            return int(found.group(1))
    raise RuntimeError("rtransfer recv exited before listening")


def from_zeros(size: int) -> subprocess.Popen[bytes]:
    """What a script pipes in: ``head -c SIZE /dev/zero``; its time counts, as it does for every tool."""
    return subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)


def nc_pipe_tool(size: int) -> Callable[[Path, Path], Sample]:
    def run(src: Path, dst: Path) -> Sample:
        port = free_port()
        head = from_zeros(size)
        try:
            return pair(
                ["nc", "-N", "-l", "127.0.0.1", str(port)],
                lambda p: ["nc", "-N", "127.0.0.1", str(p)],
                listening_on(port),
                recv_stdout=subprocess.DEVNULL,
                send_stdin=head.stdout,
            )
        finally:
            head.kill()
            head.wait()

    return run


def rtransfer_pipe_tool(size: int, *extra: str, exe: list[str] | None = None) -> Callable[[Path, Path], Sample]:
    cmd = exe or [rtransfer_exe()]

    def run(src: Path, dst: Path) -> Sample:
        head = from_zeros(size)
        recv = [*cmd, "recv", "-", "--listen", "127.0.0.1:0", "--json", *extra]
        try:
            receiver = Measured(recv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            return pair_started(
                receiver,
                lambda p: [*cmd, "send", "-", f"127.0.0.1:{p}", "--name", "zeros", "--quiet", *extra],
                rtransfer_listening_on_stderr,
                send_stdin=head.stdout,
            )
        finally:
            head.kill()
            head.wait()

    return run


def rtransfer_listening_on_stderr(receiver: subprocess.Popen[bytes]) -> int:
    """With DEST '-', stdout carries the data and the events go to stderr."""
    assert receiver.stderr is not None
    for line in receiver.stderr:
        if line.startswith(b"{") and (event := json.loads(line))["event"] == "listening":
            return int(event["port"])
    raise RuntimeError("rtransfer recv exited before listening")


def rtransfer_tool(*extra: str, exe: list[str] | None = None) -> Callable[[Path, Path], Sample]:
    cmd = exe or [rtransfer_exe()]

    def run(src: Path, dst: Path) -> Sample:
        return pair(
            [*cmd, "recv", str(dst.parent), "--listen", "127.0.0.1:0", "--json", "--overwrite", *extra],
            lambda p: [*cmd, "send", str(src), f"127.0.0.1:{p}", "--quiet", *extra],
            rtransfer_listening,
        )

    return run


class RsyncDaemon:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        conf = root / "rsyncd.conf"
        (root / "rsync").mkdir()
        conf.write_text(f"use chroot = no\n[bench]\npath = {root / 'rsync'}\nread only = no\nuid = root\ngid = root\n")
        self.proc = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={self.port}", "--address=127.0.0.1"],
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port)
        self.dir = root / "rsync"

    def run(self, src: Path, dst: Path) -> Sample:
        started = time.perf_counter()
        client = Measured(["rsync", str(src), f"rsync://127.0.0.1:{self.port}/bench/{dst.name}"])
        rc, rss = client.wait()
        elapsed = time.perf_counter() - started
        if rc:
            raise RuntimeError(f"rsync failed with {rc}")
        (self.dir / dst.name).unlink()
        return Sample(elapsed, 0, rss)

    def children_cpu_s(self) -> float:
        """CPU of the daemon's finished children (the receiving side of each run): cutime + cstime."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def wait_for_cpu(rsyncd: RsyncDaemon, before: float, timeout_s: float = 5.0) -> float:
    """The receiving child's CPU, once the daemon has reaped it (just after the client exits)."""
    deadline = time.monotonic() + timeout_s
    while (used := rsyncd.children_cpu_s() - before) <= 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    return used


def tar_nc_tool(src: Path, dst: Path) -> Sample:
    """``tar c | nc`` into ``nc -l | tar x``: the floor for a tree over one TCP connection."""
    port = free_port()
    dst.mkdir(parents=True)
    return pair(
        ["sh", "-c", f"nc -N -l 127.0.0.1 {port} | tar x -C {dst}"],
        lambda p: ["sh", "-c", f"tar c -C {src.parent} {src.name} | nc -N 127.0.0.1 {p}"],
        listening_on(port),
    )


def rtransfer_tree_tool(exe: list[str] | None = None) -> Callable[[Path, Path], Sample]:
    cmd = exe or [rtransfer_exe()]

    def run(src: Path, dst: Path) -> Sample:
        """Default output on both sides, as rsync's: no line per file (``--json`` would print one)."""
        receiver = Measured(
            [*cmd, "recv", str(dst), "--listen", "127.0.0.1:0", "--max-files", "100000000"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return pair_started(
            receiver, lambda p: [*cmd, "send", str(src), f"127.0.0.1:{p}", "--quiet"], console_listening
        )

    return run


def rsync_tree_tool(rsyncd: RsyncDaemon) -> Callable[[Path, Path], Sample]:
    def run(src: Path, dst: Path) -> Sample:
        daemon_cpu = rsyncd.children_cpu_s()
        started = time.perf_counter()
        client = Measured(["rsync", "-a", str(src), f"rsync://127.0.0.1:{rsyncd.port}/bench/{dst.name}/"])
        rc, rss = client.wait()
        elapsed = time.perf_counter() - started
        if rc:
            raise RuntimeError(f"rsync failed with {rc}")
        return Sample(elapsed, 0, rss, wait_for_cpu(rsyncd, daemon_cpu), client.cpu_s)

    return run


class LoopbackSshd(tests.sshd.LoopbackSshd):
    """The tests' private sshd, with ``scp`` as a bench tool."""

    def scp(self, src: Path, dst: Path) -> Sample:
        started = time.perf_counter()
        client = Measured(["scp", "-q", *self.options("-P"), str(src), f"root@127.0.0.1:{dst}"])
        rc, rss = client.wait()
        if rc:
            raise RuntimeError(f"scp failed with {rc}")
        return Sample(time.perf_counter() - started, 0, rss)


Ready = Callable[[subprocess.Popen[bytes]], int]


def end_to_end(recv_cmd: list[str], ready: Ready, send: Callable[[int], list[str]], **popen: object) -> Sample:
    """Timed from the receiver's launch: both start-ups count, as for a script that runs both."""
    send_stdin = popen.pop("stdin", None)
    started = time.perf_counter()
    sample = pair_started(Measured(recv_cmd, stderr=subprocess.DEVNULL, **popen), send, ready, send_stdin)
    return Sample(time.perf_counter() - started, sample.recv_rss, sample.send_rss)


def tiny_nc(src: Path, dst: Path) -> Sample:
    port = free_port()
    with open(dst, "wb") as out, open(src, "rb") as inp:
        nc_listen = ["nc", "-N", "-l", "127.0.0.1", str(port)]
        return end_to_end(
            nc_listen, listening_on(port), lambda p: ["nc", "-N", "127.0.0.1", str(p)], stdout=out, stdin=inp
        )


def tiny_rtransfer(src: Path, dst: Path, exe: list[str] | None = None) -> Sample:
    exe = exe or [rtransfer_exe()]
    recv = [*exe, "recv", str(dst.parent), "--listen", "127.0.0.1:0", "--json", "--overwrite"]
    send = [*exe, "send", str(src)]
    return end_to_end(recv, rtransfer_listening, lambda p: [*send, f"127.0.0.1:{p}", "--quiet"], stdout=subprocess.PIPE)


def tiny_main(args: argparse.Namespace, size: int) -> int:
    """One small file end to end: rtransfer (both start-ups, handshake, transfer) against nc and scp."""
    if not Path("/usr/sbin/sshd").exists():
        print("bench: tiny mode needs sshd (Debian package openssh-server)", file=sys.stderr)
        return 2
    os.environ.setdefault("RTRANSFER_SECRET", "bench-" + os.urandom(8).hex())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        src = root / "small.bin"
        write_random_file(src, size)
        (root / "out").mkdir()
        sshd = LoopbackSshd(root)
        tools = [Tool("nc", tiny_nc), Tool("scp", sshd.scp), Tool("rtransfer", tiny_rtransfer)]
        if BASELINE:
            tools.append(Tool("rtransfer-base", functools.partial(tiny_rtransfer, exe=BASELINE)))
        try:
            for round_no in range(args.warmup + args.runs):
                order = tools[round_no % len(tools) :] + tools[: round_no % len(tools)]
                for tool in order:
                    dst = root / "out" / ("small.bin" if tool.name.startswith("rtransfer") else f"{tool.name}.bin")
                    sample = tool.run(src, dst)
                    assert dst.read_bytes() == src.read_bytes(), tool.name
                    dst.unlink()
                    if round_no >= args.warmup:
                        tool.samples.append(sample)
        finally:
            sshd.close()
    scp = statistics.median(s.seconds for s in tools[1].samples)
    print(f"\n{args.size} file end to end over loopback, both start-ups included, median of {args.runs} runs\n")
    print("| tool | median s | vs scp |")
    print("|---|---|---|")
    results: dict[str, object] = {"size_bytes": size, "runs": args.runs}
    for tool in tools:
        med = statistics.median(s.seconds for s in tool.samples)
        print(f"| {tool.name} | {med:.3f} | {med / scp:.2f} |")
        results[tool.name] = {"median_s": round(med, 4), "all_s": [round(s.seconds, 4) for s in tool.samples]}
    against_baseline(tools, results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def make_tree(root: Path, files: int, size: int, dirs: int) -> Path:
    """``files`` files of ``size`` random bytes spread over ``dirs`` directories."""
    tree = root / "tree"
    for d in range(dirs):
        (tree / f"d{d:04}").mkdir(parents=True)
    for i in range(files):
        (tree / f"d{i % dirs:04}" / f"f{i:07}").write_bytes(os.urandom(size))
    return tree


def count_entries(tree: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(tree))


def differences(src: Path, dst: Path) -> list[str]:
    """What ``rsync -a -n -i -c`` would still change: content, modes, times, links (nothing, if identical)."""
    out = subprocess.run(
        ["rsync", "-a", "-n", "-i", "-c", f"{src}/", f"{dst}/"], capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()


def remove_tree(path: Path) -> None:
    """Out of the timed part, and synced, so the next tool does not pay for this one's deletes."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def startup_ms(runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([rtransfer_exe(), "--help"], stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 24))
            f.write(block)
            left -= len(block)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--mode",
        choices=[
            "file",
            "pipe",
            "tree",
            "tiny",
            "lossy",
            "rate",
            "streams",
            "sync",
            "compress",
            "relay",
            "punch",
            "ssh",
        ],
        default="file",
        help="file, stdin to stdout, tree, one small file, one file over a lossy link between network namespaces",
    )
    ap.add_argument(
        "--rate",
        default=None,
        help="lossy mode: the link's cap (tc units, default 200mbit); streams mode: each connection's",
    )
    ap.add_argument(
        "--slow-rate", default=None, help="streams mode: also run with the second connection capped at this"
    )
    ap.add_argument("--streams-list", default="1,8", help="streams mode: the --streams values to compare")
    ap.add_argument("--loss", type=int, default=2, help="lossy mode: percent of packets dropped each way")
    ap.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="lossy mode: also delay each way by this much (through tests/chaos/tunlink.py: no netem needed)",
    )
    ap.add_argument("--limit-rate", default="20M", help="rate mode: what send --limit-rate is given")
    ap.add_argument("--size", default="1G", help="bytes to move (K/M/G suffix); in tree mode, per file")
    ap.add_argument("--files", type=int, default=10000, help="tree mode: files to generate")
    ap.add_argument("--dirs", type=int, default=50, help="tree mode: directories to spread them over")
    ap.add_argument("--tree", default=None, help="tree mode: send this existing tree instead of a generated one")
    ap.add_argument("--runs", type=int, default=5, help="measured rounds")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--punch-runs", type=int, default=20, help="punch mode: runs each way for each kind of router")
    ap.add_argument("--parts", default=None, help="punch mode: which (kinds,random,forward,appears,cut; default all)")
    ap.add_argument("--tools", default=None, help="comma-separated subset (default: every tool of the mode)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--json-out", default=None, help="also write results as JSON here")
    ap.add_argument(
        "--baseline",
        default=None,
        help="file, pipe, tree and tiny modes: also run this repository at this commit, as tool rtransfer-base",
    )
    args = ap.parse_args()

    for needed in ("nc", "socat", "rsync", "ss", "rtransfer", "/usr/bin/time"):
        if shutil.which(needed) is None:
            print(f"bench: {needed} not found on PATH", file=sys.stderr)
            return 2
    if args.dir is not None and not os.path.isdir(args.dir):
        print(f"bench: --dir {args.dir}: not a directory", file=sys.stderr)
        return 2
    size = parse_size(args.size)
    if args.baseline:
        base_root = Path(tempfile.mkdtemp(prefix="rtransfer-base-"))
        BASELINE[:] = baseline_checkout(args.baseline, base_root)
    modes = {
        "tree": tree_main,
        "tiny": tiny_main,
        "lossy": lossy_main,
        "rate": rate_main,
        "streams": streams_main,
        "sync": sync_main,
        "compress": compress_main,
        "relay": functools.partial(relay_main, write_random=write_random_file),
        "punch": functools.partial(punch_main, write_random=write_random_file),
        "ssh": functools.partial(ssh_main, write_random=write_random_file),
    }
    byte_compile_rtransfer()
    if args.mode in modes:
        return modes[args.mode](args, size)
    pipe = args.mode == "pipe"
    if args.tools is None:
        args.tools = "nc,rtransfer,rtransfer-plain" if pipe else "nc,socat,rsync,rtransfer,rtransfer-plain"
    startup = round(startup_ms(STARTUP_RUNS), 1)  # first, on a quiet machine: not behind the rounds' page cache churn
    os.environ.setdefault("RTRANSFER_SECRET", "bench-" + os.urandom(8).hex())  # both sides, no code to relay
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        src = root / "src.bin"
        if not pipe:
            write_random_file(src, size)
        rsyncd = RsyncDaemon(root) if "rsync" in args.tools and not pipe else None
        available = (
            {
                "nc": nc_pipe_tool(size),
                "rtransfer": rtransfer_pipe_tool(size),
                "rtransfer-plain": rtransfer_pipe_tool(size, "--no-encrypt"),
                "rtransfer-base": rtransfer_pipe_tool(size, exe=BASELINE) if BASELINE else None,
            }
            if pipe
            else {
                "nc": nc_tool,
                "socat": socat_tool,
                "rsync": rsyncd.run if rsyncd else None,
                "rtransfer": rtransfer_tool(),
                "rtransfer-plain": rtransfer_tool("--no-encrypt"),
                "rtransfer-base": rtransfer_tool(exe=BASELINE) if BASELINE else None,
            }
        )
        tools = [Tool(n, available[n]) for n in args.tools.split(",") if available.get(n)]  # type: ignore[arg-type]
        try:
            for round_no in range(args.warmup + args.runs):
                order = tools[round_no % len(tools) :] + tools[: round_no % len(tools)]
                for tool in order:
                    dst = root / "out" / f"{tool.name}.bin"
                    dst.parent.mkdir(exist_ok=True)
                    sample = tool.run(src, dst)
                    if tool.name != "rsync" and not pipe:
                        rt = tool.name.startswith("rtransfer")
                        got = (root / "out" / ("src.bin" if rt else dst.name)).stat().st_size
                        assert got == size, f"{tool.name} wrote {got} bytes, expected {size}"
                        for leftover in (root / "out").iterdir():
                            leftover.unlink()
                    if round_no >= args.warmup:
                        tool.samples.append(sample)
                    print(f"round {round_no + 1} {tool.name}: {sample.seconds:.2f} s", file=sys.stderr, flush=True)
        finally:
            if rsyncd:
                rsyncd.close()
    nc = next((t for t in tools if t.name == "nc"), None)
    nc_median = statistics.median(s.seconds for s in nc.samples) if nc else None
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}",
        "mode": args.mode,
        "size_bytes": size,
        "runs": args.runs,
        "startup_ms": startup,
        "tools": {},
    }
    what = "through pipes (head -c | send - -> recv - > /dev/null)" if pipe else "file to file"
    print(f"\n{args.size} {what} over loopback, median of {args.runs} runs ({results['machine']}, {results['date']})\n")
    print("| tool | median s | MiB/s | vs nc | peak RSS recv | peak RSS send |")
    print("|---|---|---|---|---|---|")
    for tool in tools:
        med = statistics.median(s.seconds for s in tool.samples)
        ratio = med / nc_median if nc_median else float("nan")
        recv_rss = max(s.recv_rss for s in tool.samples) / (1 << 20)
        send_rss = max(s.send_rss for s in tool.samples) / (1 << 20)
        results["tools"][tool.name] = {  # type: ignore[index]
            "median_s": round(med, 3),
            "all_s": [round(s.seconds, 3) for s in tool.samples],
            "ratio_to_nc": round(ratio, 3),
            "peak_rss_recv_mib": round(recv_rss, 1),
            "peak_rss_send_mib": round(send_rss, 1),
        }
        recv_col = f"{recv_rss:.0f} MiB" if recv_rss else "(daemon)"
        rate = size / med / (1 << 20)
        print(f"| {tool.name} | {med:.2f} | {rate:.0f} | {ratio:.2f} | {recv_col} | {send_rss:.0f} MiB |")
    names = {t.name: t for t in tools}
    if "rtransfer" in names and "rtransfer-plain" in names:
        enc = statistics.median(s.seconds for s in names["rtransfer"].samples)
        plain = statistics.median(s.seconds for s in names["rtransfer-plain"].samples)
        results["encrypted_throughput_vs_plain"] = round(plain / enc, 3)
        print(f"\nencrypted throughput / unencrypted throughput: {plain / enc:.2f}")
    against_baseline(tools, results)
    print(f"\nrtransfer --help startup: {results['startup_ms']} ms (median of {STARTUP_RUNS})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def tree_main(args: argparse.Namespace, size: int) -> int:
    """Trees: rtransfer against ``tar c | nc | tar x`` and an rsync daemon (``rsync -a``), alternating."""
    os.environ.setdefault("RTRANSFER_SECRET", "bench-" + os.urandom(8).hex())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        src = Path(args.tree).resolve() if args.tree else make_tree(root, args.files, size, args.dirs)
        entries = count_entries(src)
        rsyncd = RsyncDaemon(root)
        available = {"tar|nc": tar_nc_tool, "rsync": rsync_tree_tool(rsyncd), "rtransfer": rtransfer_tree_tool()}
        if BASELINE:
            available["rtransfer-base"] = rtransfer_tree_tool(BASELINE)
        names = (args.tools or "tar|nc,rsync,rtransfer").split(",")
        tools = [Tool(n, available[n]) for n in names]
        last_rtransfer: Path | None = None
        try:
            for round_no in range(args.warmup + args.runs):
                order = tools[round_no % len(tools) :] + tools[: round_no % len(tools)]
                for tool in order:
                    label = tool.name.replace("|", "-")
                    dst = (rsyncd.dir if tool.name == "rsync" else root / "out") / f"{label}-round{round_no}"
                    os.sync()
                    sample = tool.run(src, dst)
                    got = count_entries(dst / src.name)
                    assert got == entries, f"{tool.name} made {got} entries, expected {entries}"
                    if tool.name == "rtransfer" and round_no == args.warmup + args.runs - 1:
                        last_rtransfer = dst
                    else:
                        remove_tree(dst)
                    if round_no >= args.warmup:
                        tool.samples.append(sample)
                    print(f"round {round_no + 1} {tool.name}: {sample.seconds:.2f} s", file=sys.stderr, flush=True)
            diff = differences(src, last_rtransfer / src.name) if last_rtransfer else []
        finally:
            rsyncd.close()
    base = statistics.median(s.seconds for s in tools[0].samples) if tools[0].name == "tar|nc" else None
    what = args.tree or f"{args.files} files x {args.size} in {args.dirs} directories"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    print(f"\n{what} ({entries} entries) over loopback, median of {args.runs} runs ({machine})\n")
    columns = "median s | vs tar\\|nc | vs rsync | CPU µs/entry send | CPU µs/entry recv | RSS recv | RSS send"
    print(f"| tool | {columns} |")
    print("|---|---|---|---|---|---|---|---|")
    by_name = {t.name: t for t in tools}
    rsync_med = statistics.median(s.seconds for s in by_name["rsync"].samples) if "rsync" in by_name else None
    results: dict[str, object] = {"what": what, "entries": entries, "runs": args.runs}
    for tool in tools:
        med = statistics.median(s.seconds for s in tool.samples)
        ratio = med / base if base else float("nan")
        recv_rss = max(s.recv_rss for s in tool.samples) / (1 << 20)
        send_rss = max(s.send_rss for s in tool.samples) / (1 << 20)
        recv_col = f"{recv_rss:.0f} MiB" if recv_rss and tool.name.startswith("rtransfer") else "-"
        send_col = f"{send_rss:.0f} MiB" if tool.name.startswith("rtransfer") else "-"
        send_us = statistics.median(s.send_cpu_s for s in tool.samples) / entries * 1e6
        recv_us = statistics.median(s.recv_cpu_s for s in tool.samples) / entries * 1e6
        vs_rsync = f"{med / rsync_med:.2f}" if rsync_med else "-"
        cpu = f"{send_us:.1f} | {recv_us:.1f}" if tool.name != "tar|nc" else "- | -"
        print(f"| {tool.name} | {med:.2f} | {ratio:.2f} | {vs_rsync} | {cpu} | {recv_col} | {send_col} |")
        results[tool.name] = {
            "median_s": round(med, 3),
            "all_s": [round(s.seconds, 3) for s in tool.samples],
            "cpu_us_per_entry": [round(send_us, 1), round(recv_us, 1)],
        }
        results[tool.name + "_peak_rss_mib"] = [round(recv_rss, 1), round(send_rss, 1)]
    against_baseline(tools, results)
    if "rtransfer" in available and last_rtransfer is not None:
        print(f"\nrsync -a -n -i -c after rtransfer: {len(diff)} differences")
        for line in diff[:10]:
            print(f"  {line}")
        results["rtransfer_differences"] = len(diff)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 1 if diff else 0


def lossy_main(args: argparse.Namespace, size: int) -> int:
    """A real lossy link (two network namespaces, tests/chaos/netns.py): rtransfer against nc, alternating."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.chaos.netns import Unavailable, delayed_link, dropped_packets, lossy_link

    os.environ.setdefault("RTRANSFER_SECRET", "bench-" + os.urandom(8).hex())
    try:
        link = (
            delayed_link(args.delay_ms, args.rate or "200mbit", args.loss)
            if args.delay_ms
            else lossy_link(args.rate or "200mbit", args.loss)
        )
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp, link as links:
            a, b, addr = links
            root = Path(tmp)
            src = root / "src.bin"
            write_random_file(src, size)
            tools = [Tool(n, lossy_tool(n, a, b, addr)) for n in (args.tools or "nc,rtransfer").split(",")]
            for round_no in range(args.warmup + args.runs):
                for tool in tools[round_no % len(tools) :] + tools[: round_no % len(tools)]:
                    dst = root / "out" / f"{tool.name}.bin"
                    dst.parent.mkdir(exist_ok=True)
                    sample = tool.run(src, dst)
                    for leftover in dst.parent.iterdir():
                        assert leftover.stat().st_size == size, f"{tool.name} wrote {leftover.stat().st_size} bytes"
                        leftover.unlink()
                    if round_no >= args.warmup:
                        tool.samples.append(sample)
                    print(f"round {round_no + 1} {tool.name}: {sample.seconds:.2f} s", file=sys.stderr, flush=True)
            dropped = "the relay's" if args.delay_ms else dropped_packets(a) + dropped_packets(b)
    except Unavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    base = statistics.median(s.seconds for s in tools[0].samples)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    delay = f", {args.delay_ms:g} ms each way" if args.delay_ms else ""
    print(
        f"\n{args.size} over a {args.rate or '200mbit'} link with {args.loss}% loss each way{delay} ({dropped} dropped)"
    )
    print(f"median of {args.runs} runs ({machine})\n")
    print(f"| tool | median s | MiB/s | vs {tools[0].name} |")
    print("|---|---|---|---|")
    for tool in tools:
        med = statistics.median(s.seconds for s in tool.samples)
        print(f"| {tool.name} | {med:.2f} | {size / med / (1 << 20):.1f} | {med / base:.2f} |")
    return 0


def rate_main(args: argparse.Namespace, size: int) -> int:
    """``send --limit-rate`` through the chaos proxy, which counts the bytes it forwards each second."""
    os.environ.setdefault("RTRANSFER_SECRET", "bench-" + os.urandom(8).hex())
    rate = parse_size(args.limit_rate)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        src = root / "src.bin"
        write_random_file(src, size)
        for run_no in range(args.runs):
            seconds = limited_run(src, root / f"out{run_no}", args.limit_rate)
            full = seconds[1:-1] or seconds  # the first and last seconds are partly idle
            average, peak = sum(full) / len(full), max(seconds)
            rows.append((average, peak))
            print(f"run {run_no + 1}: {len(seconds)} s, average {average / rate:.3f}x, peak {peak / rate:.3f}x",
                  file=sys.stderr, flush=True)  # fmt: skip
    print(f"\n{args.size} with --limit-rate {args.limit_rate} ({rate} B/s), per second through the proxy")
    print(f"({platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})\n")
    print("| run | average B/s | average / rate | busiest second / rate |")
    print("|---|---|---|---|")
    for run_no, (average, peak) in enumerate(rows, 1):
        print(f"| {run_no} | {average:.0f} | {average / rate:.3f} | {peak / rate:.3f} |")
    return 0


def limited_run(src: Path, dst: Path, limit: str) -> list[int]:
    """Bytes forwarded in each second of one limited transfer, from its first byte to its last."""
    root = Path(__file__).resolve().parents[1]
    receiver = subprocess.Popen(
        [rtransfer_exe(), "recv", str(dst), "--listen", "127.0.0.1:0", "--json"], stdout=subprocess.PIPE
    )
    port = rtransfer_listening(receiver)
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.chaos.proxy", "--target", f"127.0.0.1:{port}", "--tick"],
        stdout=subprocess.PIPE,
        cwd=root,
    )
    try:
        assert proxy.stdout is not None
        proxy_port = json.loads(proxy.stdout.readline())["port"]
        sent = subprocess.run(
            [rtransfer_exe(), "send", str(src), f"127.0.0.1:{proxy_port}", "--quiet", "--limit-rate", limit]
        )
        if sent.returncode or receiver.wait(timeout=60):
            raise RuntimeError("the limited transfer failed")
        proxy.terminate()
        out, _ = proxy.communicate(timeout=10)
    finally:
        for proc in (receiver, proxy):
            if proc.returncode is None:
                proc.kill()
    ticks = [json.loads(line) for line in out.decode().splitlines()]
    counts = [t["up_bytes"] for t in ticks if t["event"] == "second"]
    busy = [i for i, n in enumerate(counts) if n > 64 * 1024]  # the handshake alone is a few KiB
    return counts[busy[0] : busy[-1] + 1]


def streams_main(args: argparse.Namespace, size: int) -> int:
    """rtransfer with different --streams, each connection through the chaos proxy's own rate cap
    (``--rate``; ``--slow-rate`` caps its second connection lower; no ``--rate``: plain loopback)."""
    os.environ.setdefault("RTRANSFER_SECRET", "bench-" + os.urandom(8).hex())
    configs = [(f"streams {n}", n, None) for n in (int(x) for x in args.streams_list.split(","))]
    if args.slow_rate:
        top = max(n for _, n, _ in configs)
        configs.append((f"streams {top}, one at {args.slow_rate}", top, args.slow_rate))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        src = root / "src.bin"
        write_random_file(src, size)
        tools = [Tool(name, streams_tool(n, args.rate, slow)) for name, n, slow in configs]
        for round_no in range(args.warmup + args.runs):
            for tool in tools[round_no % len(tools) :] + tools[: round_no % len(tools)]:
                dst = root / "out"
                sample = tool.run(src, dst)
                assert (dst / "src.bin").read_bytes() == src.read_bytes(), f"{tool.name}: the copy differs"
                shutil.rmtree(dst)
                if round_no >= args.warmup:
                    tool.samples.append(sample)
                print(f"round {round_no + 1} {tool.name}: {sample.seconds:.2f} s", file=sys.stderr, flush=True)
    base = statistics.median(s.seconds for s in tools[0].samples)
    cap = f"each connection capped at {args.rate}/s by the chaos proxy" if args.rate else "loopback, no cap"
    print(f"\n{args.size}, {cap}, median of {args.runs} runs ({platform.machine()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')})\n")  # fmt: skip
    print(f"| configuration | median s | MiB/s | time vs {tools[0].name} | peak RSS recv | peak RSS send |")
    print("|---|---|---|---|---|---|")
    for tool in tools:
        med = statistics.median(s.seconds for s in tool.samples)
        recv_rss = max(s.recv_rss for s in tool.samples) >> 20
        send_rss = max(s.send_rss for s in tool.samples) >> 20
        rate = size / med / (1 << 20)
        print(f"| {tool.name} | {med:.2f} | {rate:.0f} | {med / base:.2f} | {recv_rss} MiB | {send_rss} MiB |")
    return 0


def streams_tool(streams: int, rate: str | None, slow_rate: str | None) -> Callable[[Path, Path], Sample]:
    def run(src: Path, dst: Path) -> Sample:
        receiver = Measured(
            [rtransfer_exe(), "recv", str(dst), "--listen", "127.0.0.1:0", "--json"], stdout=subprocess.PIPE
        )
        port = rtransfer_listening(receiver.proc)
        proxy = None
        if rate:
            faults = ["--rate", rate] + (["--slow-connection", "2", "--slow-rate", slow_rate] if slow_rate else [])
            proxy = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.proxy", "--target", f"127.0.0.1:{port}", *faults],
                stdout=subprocess.PIPE,
                cwd=Path(__file__).resolve().parents[1],
            )
            assert proxy.stdout is not None
            port = json.loads(proxy.stdout.readline())["port"]
            threading.Thread(target=proxy.stdout.read, daemon=True).start()
        try:
            return pair_started(
                receiver,
                lambda p: [
                    rtransfer_exe(),
                    "send",
                    str(src),
                    f"127.0.0.1:{port}",
                    "--quiet",
                    "--streams",
                    str(streams),
                ],
                lambda _: port,
            )
        finally:
            if proxy is not None:
                proxy.kill()
                proxy.wait()

    return run


class CountingProxy:
    """The chaos proxy in front of a port, capping each connection at ``rate``; ``close`` gives the
    bytes it forwarded both ways over every connection: what went over the wire."""

    def __init__(self, port: int, rate: str | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.proxy", "--target", f"127.0.0.1:{port}"]
            + (["--rate", rate] if rate else []),
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self.lines.extend(line.decode() for line in self.proc.stdout)

    def close(self) -> int:
        """Wait for every connection's "closed" report, then stop; the bytes forwarded."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events = [json.loads(line) for line in list(self.lines)]
            opened = sum(e["event"] == "connection" for e in events)
            closed = [e for e in events if e["event"] == "closed"]
            if len(closed) == opened:
                break
            time.sleep(0.01)
        self.proc.kill()
        self.proc.wait()
        return sum(e["up_bytes"] + e["down_bytes"] for e in closed)


SYNC_CHANGES = {
    "new file (no old copy)": None,
    "1 MiB overwritten in the middle": "overwrite",
    "1 KiB inserted at one third": "insert",
}


def changed_version(base: bytes, change: str | None) -> bytes:
    if change == "overwrite":
        return base[: len(base) // 2] + os.urandom(1 << 20) + base[len(base) // 2 + (1 << 20) :]
    if change == "insert":
        return base[: len(base) // 3] + os.urandom(1024) + base[len(base) // 3 :]
    return base


def sync_main(args: argparse.Namespace, size: int) -> int:
    """A 256 MiB file the receiver holds an old version of, changed and re-sent, by rtransfer
    (``recv --overwrite``: a delta) and by rsync (to an rsync daemon: its rolling-checksum delta),
    both through the chaos proxy's rate cap; bytes on the wire as the proxy counts them."""
    os.environ.setdefault("RTRANSFER_SECRET", "bench-" + os.urandom(8).hex())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        old = os.urandom(size)
        rsyncd = RsyncDaemon(root)
        results: Samples = {}
        try:
            for change_name, change in SYNC_CHANGES.items():
                new = changed_version(old, change)
                src = root / "src" / "f.bin"
                src.parent.mkdir(exist_ok=True)
                src.write_bytes(new)
                tools = {"rtransfer": sync_rtransfer, "rsync": sync_rsync(rsyncd)}
                for round_no in range(args.warmup + args.runs):
                    for name in sorted(tools, reverse=round_no % 2 == 1):
                        dst = rsyncd.dir if name == "rsync" else root / "out"
                        dst.mkdir(exist_ok=True)
                        if change is not None:
                            (dst / "f.bin").write_bytes(old)
                            os.utime(dst / "f.bin", (1, 1))  # older: the quick check sends it
                        seconds, wire = tools[name](src, dst, args.rate)
                        assert (dst / "f.bin").read_bytes() == new, f"{name}: the copy differs"
                        (dst / "f.bin").unlink()
                        record(results, (change_name, name), round_no >= args.warmup, seconds, wire)
        finally:
            rsyncd.close()
    print_heading(args, f"each connection capped at {args.rate}/s by the chaos proxy")
    print("| change | tool | median s | vs the new file's time | on the wire | share of the file |")
    print("|---|---|---|---|---|---|")
    for (change_name, name), samples in results.items():
        med, on_wire = medians(samples)
        full, _ = medians(results[(next(iter(SYNC_CHANGES)), name)])
        print(f"| {change_name} | {name} | {med:.2f} | {med / full:.2f} | {on_wire / (1 << 20):.2f} MiB | "
              f"{100 * on_wire / size:.2f}% |")  # fmt: skip
    return 0


Samples = dict[tuple[str, str], list[tuple[float, int]]]


def record(results: Samples, key: tuple[str, str], counted: bool, seconds: float, wire: int) -> None:
    """Keep a measured round's (seconds, bytes on the wire) under ``key``; say it either way."""
    if counted:
        results.setdefault(key, []).append((seconds, wire))
    print(f"{', '.join(key)}: {seconds:.2f} s, {wire} bytes", file=sys.stderr, flush=True)


def medians(samples: list[tuple[float, int]]) -> tuple[float, float]:
    return statistics.median(s for s, _ in samples), statistics.median(w for _, w in samples)


def print_heading(args: argparse.Namespace, conditions: str) -> None:
    print(f"\n{args.size}, {conditions}, median of {args.runs} runs "
          f"({platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})\n")  # fmt: skip


def through_proxy(
    src: Path, dst: Path, rate: str | None, recv_args: tuple[str, ...] = (), send_args: tuple[str, ...] = ()
) -> tuple[float, int]:
    """One rtransfer run through a CountingProxy: seconds, and bytes on the wire."""
    receiver = Measured(
        [rtransfer_exe(), "recv", str(dst), "--listen", "127.0.0.1:0", "--json", *recv_args], stdout=subprocess.PIPE
    )
    proxy = CountingProxy(rtransfer_listening(receiver.proc), rate)
    try:
        sample = pair_started(
            receiver,
            lambda _: [rtransfer_exe(), "send", str(src), f"127.0.0.1:{proxy.port}", "--quiet", *send_args],
            lambda _: 0,  # already listening
        )
    finally:
        wire = proxy.close()
    return sample.seconds, wire


def sync_rtransfer(src: Path, dst: Path, rate: str | None) -> tuple[float, int]:
    return through_proxy(src, dst, rate, recv_args=("--overwrite",))


def sync_rsync(rsyncd: RsyncDaemon) -> Callable[[Path, Path, str | None], tuple[float, int]]:
    def run(src: Path, dst: Path, rate: str | None) -> tuple[float, int]:
        proxy = CountingProxy(rsyncd.port, rate)
        try:
            started = time.perf_counter()
            rc = subprocess.run(["rsync", str(src), f"rsync://127.0.0.1:{proxy.port}/bench/"]).returncode
            elapsed = time.perf_counter() - started
        finally:
            wire = proxy.close()
        if rc:
            raise RuntimeError(f"rsync failed with {rc}")
        return elapsed, wire

    return run


def compress_main(args: argparse.Namespace, size: int) -> int:
    """``send --compress`` and without, on log-like text and on random bytes, through the proxy's cap
    (``--rate``) or over plain loopback (no ``--rate``); bytes on the wire as the proxy counts them."""
    os.environ.setdefault("RTRANSFER_SECRET", "bench-" + os.urandom(8).hex())
    results: Samples = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        for kind in ("log lines", "random"):
            src = root / "src" / "f.bin"
            src.parent.mkdir(exist_ok=True)
            src.write_bytes(log_lines(size) if kind == "log lines" else os.urandom(size))
            configs: dict[str, tuple[str, ...]] = {"plain": (), "--compress": ("--compress",)}
            for round_no in range(args.warmup + args.runs):
                for name in sorted(configs, reverse=round_no % 2 == 1):
                    dst = root / "out"
                    if args.rate:
                        seconds, wire = through_proxy(src, dst, args.rate, send_args=configs[name])
                    else:  # plain loopback: the proxy would be the bottleneck
                        seconds, wire = direct_run(src, dst, configs[name]), 0
                    assert (dst / "f.bin").read_bytes() == src.read_bytes(), f"{name}: the copy differs"
                    shutil.rmtree(dst)
                    record(results, (kind, name), round_no >= args.warmup, seconds, wire)
    print_heading(args, f"each connection capped at {args.rate}/s by the chaos proxy" if args.rate else "loopback")
    print("| data | configuration | median s | time vs plain | on the wire |")
    print("|---|---|---|---|---|")
    for (kind, name), samples in results.items():
        med, on_wire = medians(samples)
        plain, _ = medians(results[(kind, "plain")])
        wire_col = f"{on_wire / (1 << 20):.1f} MiB" if on_wire else "-"
        print(f"| {kind} | {name} | {med:.2f} | {med / plain:.2f} | {wire_col} |")
    return 0


def direct_run(src: Path, dst: Path, send_args: tuple[str, ...]) -> float:
    return pair(
        [rtransfer_exe(), "recv", str(dst), "--listen", "127.0.0.1:0", "--json"],
        lambda p: [rtransfer_exe(), "send", str(src), f"127.0.0.1:{p}", "--quiet", *send_args],
        rtransfer_listening,
    ).seconds


def log_lines(size: int) -> bytes:
    """Log-like text: timestamps, a few levels and paths, numbers (zstd -3 takes it to about a sixth)."""
    import random

    rng = random.Random(7)
    levels, paths = ["INFO", "WARN", "ERROR"], ["/api/v1/users", "/api/v1/items", "/static/app.js", "/login"]
    out, n, i = [], 0, 0
    while n < size:
        line = (
            f"2026-11-30T12:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z {rng.choice(levels)} "
            f"{rng.choice(('GET', 'POST'))} {rng.choice(paths)} {rng.choice((200, 200, 200, 404, 500))} "
            f"{rng.randint(1, 999)}ms 10.0.{rng.randint(0, 255)}.{rng.randint(0, 255)}\n"
        ).encode()
        out.append(line)
        n += len(line)
        i += 1
    return b"".join(out)[:size]


def lossy_tool(name: str, sender_ns: str, receiver_ns: str, addr: str) -> Callable[[Path, Path], Sample]:
    from tests.chaos.netns import in_ns

    def nc(src: Path, dst: Path) -> Sample:
        port = free_port()
        with open(dst, "wb") as out, open(src, "rb") as inp:
            return pair(
                in_ns(receiver_ns, "nc", "-N", "-l", addr, str(port)),
                lambda p: in_ns(sender_ns, "nc", "-N", addr, str(p)),
                listening_on(port, receiver_ns),
                recv_stdout=out,
                send_stdin=inp,
            )

    def rtransfer(src: Path, dst: Path) -> Sample:
        return pair(
            in_ns(receiver_ns, rtransfer_exe(), "recv", str(dst.parent), "--listen", f"{addr}:0", "--json"),
            lambda p: in_ns(sender_ns, rtransfer_exe(), "send", str(src), f"{addr}:{p}", "--quiet"),
            rtransfer_listening,
        )

    def rtransfer_streams(src: Path, dst: Path) -> Sample:
        return pair(
            in_ns(receiver_ns, rtransfer_exe(), "recv", str(dst.parent), "--listen", f"{addr}:0", "--json"),
            lambda p: in_ns(sender_ns, rtransfer_exe(), "send", str(src), f"{addr}:{p}", "--quiet", "--streams", "4"),
            rtransfer_listening,
        )

    return {"nc": nc, "rtransfer": rtransfer, "rtransfer-streams4": rtransfer_streams}[name]


if __name__ == "__main__":
    sys.exit(main())
