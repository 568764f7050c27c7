"""Bad input and signals: one clear line, the documented exit code, nothing under a final name."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Proc, Receiver, rtransfer_cmd, run, write_random


def one_error_line(stderr: bytes) -> str:
    """Exactly one error line (warnings may precede it) and never a traceback."""
    text = stderr.decode()
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if not line.startswith("rtransfer: warning: ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("rtransfer: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["send", "x", "nohostport"], "expected HOST:PORT"),
        (["send", "x", "host:99999"], "invalid port"),
        (["send", "x"], "missing HOST:PORT after 'x'"),
        (["send"], "missing SOURCE... and HOST:PORT"),
        (["send", "x", "localhost:0"], "port 0"),
        (["send", "x", "h:1", "--code", "c", "--streams", "0"], "--streams"),
        (["send", "x", "h:1", "--chunk-size", "12Q"], "invalid size"),
        (["send", "x", "h:1", "--window", "0"], "--window"),
        (["send", "x", "h:1", "--frobnicate"], "No such option"),
        (["recv", "--listen", "host:port"], "invalid port"),
        (["send", "x", "--relay", "r:1", "--no-encrypt"], "--no-encrypt is refused with --relay"),
        (["send", "x", "--relay", "r:1", "--listen", "9"], "--relay and --listen"),
        (["send", "x", "h:9", "--relay", "r:1"], "--relay and 'h:9'"),
        (["send", "x", "--relay", "r"], "expected HOST:PORT"),
        (["recv", "out", "--relay", "r:1", "--connect", "h:1", "--code", "c"], "--relay and --connect"),
        (["recv", "out", "--relay", "r:1", "--listen", "9"], "--relay and --listen"),
        (["recv", "out", "--relay", "r:1", "--no-encrypt"], "--no-encrypt is refused with --relay"),
        (["bogus"], "No such command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], needle: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert needle in one_error_line(result.stderr)


def test_the_relay_from_the_environment_yields_to_an_address_given(tmp_path: Path) -> None:
    """RTRANSFER_RELAY, set for every transfer, does not take over a command that names its peer:
    this send dials HOST:PORT (refused) instead of waiting at the relay."""
    (tmp_path / "x").write_bytes(b"x")
    refused = free_port()
    env = {**os.environ, "RTRANSFER_RELAY": f"127.0.0.1:{free_port()}"}
    result = subprocess.run(
        [*rtransfer_cmd(), "send", str(tmp_path / "x"), f"127.0.0.1:{refused}", "--retries", "0"],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 3 and f"could not connect to 127.0.0.1:{refused}" in result.stderr.decode()
    result = subprocess.run(
        [*rtransfer_cmd(), "send", str(tmp_path / "x"), "--code", "7hk2-m9xq-3wfe", "--retries", "0"],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 3 and "could not connect to relay 127.0.0.1:" in result.stderr.decode()


def test_an_option_error_with_json_is_an_error_event() -> None:
    result = run("send", "x", "h:1", "--frobnicate", "--json")
    assert result.returncode == 2
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["error", "done"] and "No such option" in events[0]["message"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_is_for_the_shell_named(shell: str) -> None:
    result = run("--show-completion", shell)
    marks = {"bash": "complete -o", "zsh": "#compdef rtransfer", "fish": "complete --command rtransfer"}
    assert result.returncode == 0 and marks[shell] in result.stdout.decode()


def test_dest_under_a_file_is_refused_before_listening(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    result = run("recv", str(tmp_path / "f" / "sub"), "--listen", "127.0.0.1:0")
    assert result.returncode == 6
    assert "is not a directory" in one_error_line(result.stderr) and b"listening" not in result.stderr


def test_missing_source_exits_6_before_connecting(tmp_path: Path) -> None:
    result = run("send", str(tmp_path / "nope"), "127.0.0.1:9")
    assert result.returncode == 6
    assert "no such file or directory" in one_error_line(result.stderr).lower()


def without_permission_override() -> list[str]:
    """Root reads everything; root without CAP_DAC_OVERRIDE/READ_SEARCH obeys file modes."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop the permission override")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


def test_unreadable_source_exits_6(tmp_path: Path) -> None:
    from tests.conftest import rtransfer_cmd

    f = tmp_path / "secret"
    f.write_bytes(b"x")
    f.chmod(0)
    cmd = [*without_permission_override(), *rtransfer_cmd(), "send", str(f), "127.0.0.1:9"]
    result = subprocess.run(cmd, capture_output=True, timeout=60)
    assert result.returncode == 6
    assert "permission denied" in one_error_line(result.stderr).lower()


def test_dest_not_writable_exits_6(tmp_path: Path) -> None:
    from tests.conftest import rtransfer_cmd

    dest = tmp_path / "readonly"
    dest.mkdir()
    dest.chmod(0o555)
    cmd = [*without_permission_override(), *rtransfer_cmd(), "recv", str(dest), "--listen", "127.0.0.1:0"]
    result = subprocess.run(cmd, capture_output=True, timeout=60)
    assert result.returncode == 6
    assert "permission denied" in one_error_line(result.stderr).lower()


@pytest.mark.parametrize("under", ["", "new/dir"])
def test_a_dest_on_a_read_only_file_system_says_so_and_exits_6(tmp_path: Path, under: str) -> None:
    """It was reported as "permission denied"."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs (CI runs as root)")
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = run("recv", str(mount / under), "--listen", "127.0.0.1:0")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    assert result.returncode == 6
    assert "read-only file system" in one_error_line(result.stderr).lower()


def closed_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused."""
    return free_port()


@pytest.mark.parametrize(
    "where",
    [
        ["send", "{f}", "--relay", "127.0.0.1:{port}"],  # a relay that isn't running
        ["recv", "{out}", "--relay", "127.0.0.1:{port}"],
        ["send", "{f}", "root@127.0.0.1:{out}", "-e", "ssh -p {port} -o BatchMode=yes"],  # a refused ssh port
        ["recv", "root@127.0.0.1:{f}", "{out}", "-e", "ssh -p {port} -o BatchMode=yes"],
        ["send", "{f}", "nosuch.invalid:{out}"],  # over ssh: the host's name doesn't resolve
        ["send", "{f}", "nosuch.invalid:9"],  # the same over TCP
        ["send", "{f}", "--relay", "nosuch.invalid:4001"],
    ],
)
def test_what_waiting_cannot_fix_fails_at_once_with_exit_3(tmp_path: Path, where: list[str]) -> None:
    """A relay that isn't running took 55 s to say so, a refused ssh port 57 s, and an unknown
    host over ssh exited 5 ("handshake refused") where the TCP form exits 3."""
    if "-e" in where and shutil.which("ssh") is None:
        pytest.skip("ssh is installed by tests/run.sh")
    (tmp_path / "f").write_bytes(b"x")
    fill = {"f": str(tmp_path / "f"), "out": str(tmp_path / "out"), "port": str(closed_port())}
    result = run(*(arg.format(**fill) for arg in where), timeout_s=20)  # it waited a minute
    assert result.returncode == 3, result.stderr
    said = b"".join(x for x in result.stderr.splitlines(True) if not x.startswith(b"rtransfer: waiting for the"))
    line = one_error_line(said).lower()  # after where it waits, announced before the relay is reached
    assert "refused" in line or "not known" in line or "could not resolve" in line, line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_exits_3(tmp_path: Path) -> None:
    write_random(tmp_path / "a", 10)
    result = run("send", str(tmp_path / "a"), f"127.0.0.1:{free_port()}", "--retries", "0")
    assert result.returncode == 3
    assert "could not connect" in one_error_line(result.stderr)


def test_connect_retries_are_the_ones_asked_for_not_retries_of_retries(tmp_path: Path) -> None:
    """Connecting and reconnecting share one backoff: --retries 2 means three attempts in all, said
    once, with what to check; the final error says it again."""
    write_random(tmp_path / "a", 10)
    port = free_port()
    result = run("send", str(tmp_path / "a"), f"127.0.0.1:{port}", "--retries", "2", "--json")
    assert result.returncode == 3
    events = [json.loads(line) for line in result.stdout.splitlines()]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and f"waiting for the receiver at 127.0.0.1:{port}" in warnings[0], warnings
    assert "2 retries" in warnings[0] and "is `rtransfer recv` running there?" in warnings[0]
    error = events[-2]
    assert (
        error["event"] == "error" and "could not connect" in error["message"] and "rtransfer recv" in error["message"]
    )


def test_a_receiver_dialing_nobody_says_so_once_with_the_hint_and_exits_3(tmp_path: Path) -> None:
    port = free_port()
    result = run("recv", str(tmp_path / "out"), "--connect", f"127.0.0.1:{port}", "--code", "c", "--retries", "2")
    assert result.returncode == 3
    lines = result.stderr.decode().splitlines()
    assert len([line for line in lines if "warning" in line]) == 1
    assert "rtransfer send --listen" in one_error_line(result.stderr)


def test_a_connect_that_gets_no_answer_times_out_and_exits_3(tmp_path: Path) -> None:
    """A listener whose backlog is full drops further SYNs: the kernel alone would keep retrying for ~2 minutes."""
    write_random(tmp_path / "a", 10)
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # takes the one place in the backlog; nothing accepts it
        port = listener.getsockname()[1]
        result = run("send", str(tmp_path / "a"), f"127.0.0.1:{port}", "--timeout", "1", "--retries", "1")
    assert result.returncode == 3
    assert "no answer within 1 s" in one_error_line(result.stderr)


def test_port_in_use_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        result = run("recv", "--listen", f"127.0.0.1:{s.getsockname()[1]}")
    assert result.returncode == 3
    assert "address already in use" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    "junk", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x63" * 13 + b"junk" * 1000], ids=["http", "junk"]
)
def test_a_peer_that_is_not_rtransfer_is_refused_with_exit_5(tmp_path: Path, procs: list[Proc], junk: bytes) -> None:
    """Bytes still coming after the refusal made asyncio print a "Fatal error on transport" dump."""
    procs.append(rx := Receiver(tmp_path / "out"))
    with socket.create_connection(("127.0.0.1", rx.port)) as s:
        s.sendall(junk)
        assert rx.finish() == 5
    assert "handshake failed" in rx.events("error")[0]["message"]
    assert rx.proc.stderr is not None and rx.proc.stderr.read() == b""  # --json: every word is an event
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_a_waiting_receiver_cleanly(tmp_path: Path, procs: list[Proc], sig: int, code: int) -> None:
    procs.append(rx := Receiver(tmp_path / "out"))
    rx.proc.send_signal(sig)
    assert rx.finish() == code
    assert "Traceback" not in rx.proc.stderr.read().decode()  # type: ignore[union-attr]
    assert rx.events("error")[0]["message"] == f"interrupted by {signal.Signals(sig).name}"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_transfer_stops_both_sides_and_leaves_no_final_file(
    tmp_path: Path, procs: list[Proc], sig: int, code: int
) -> None:
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(tx := Proc(["send", "-", rx.address, "--json", "--name", "s"], stdin=subprocess.PIPE))
    assert tx.proc.stdin is not None
    tx.proc.stdin.write(b"x" * (2 * 1024 * 1024))
    tx.proc.stdin.flush()
    rx.wait_event("start")
    tx.proc.send_signal(sig)
    assert tx.finish() == code
    stderr = tx.proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "Traceback" not in stderr
    assert tx.events("error")[0]["message"] == f"interrupted by {signal.Signals(sig).name}"
    assert rx.finish() not in (0, None)
    assert not (tmp_path / "out" / "s").exists()
    assert not list((tmp_path / "out").glob(".*rtpart"))
