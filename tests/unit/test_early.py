"""The entry point's head start (cli/early.py): ssh started from the arguments before the command
line loads. Its guess must be the far command the parsed options make, or nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import typer.main

from rtransfer.cli import commands, early, transfer
from rtransfer.cli.options import pull_command, push_command
from rtransfer.transport import ssh_launch
from rtransfer.transport.ssh_launch import SshCommand


def parsed(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> SshCommand | None:
    """The far command the command line makes of ``argv``, parsed by typer as the command does."""
    made: list[SshCommand | None] = []
    monkeypatch.setattr(transfer, "send", lambda options, reporter: made.append(push_command(options)) or 0)
    monkeypatch.setattr(transfer, "recv", lambda options, reporter: made.append(pull_command(options)) or 0)
    typer.main.get_command(commands.app).main(argv, prog_name="rtransfer", standalone_mode=False)
    return made[0]


def test_every_option_is_known_as_typer_knows_it() -> None:
    """A new option of send or recv must be listed here too, with whether it takes a value: the
    scanner would otherwise take a value for a SOURCE, or a flag for one taking the next word."""
    command = typer.main.get_command(commands.app)
    for name, (values, flags) in early.OPTIONS.items():
        params = [p for p in command.commands[name].params if p.param_type_name == "option"]  # type: ignore[attr-defined]
        assert set(values) == {n for p in params if not p.is_flag for n in (*p.opts, *p.secondary_opts)}
        assert set(flags) == {n for p in params if p.is_flag for n in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "f", "host:dest/"],
        ["send", "f", "g", "user@host:"],
        ["send", "-q", "f", "host:/srv/x", "-e", "ssh -p 2222 -i key", "--remote-path=/opt/rt"],
        ["send", "--timeout", "7.5", "--overwrite", "--delete", "-n", "-o", "-g", "--devices", "f", "h:d"],
        ["send", "--json", "--", "-f", "[::1]:dir"],
        ["send", "--rsh=ssh -C", "--delete-excluded", "-z", "-c", "-W", "d/", "h:d/"],
        ["recv", "host:a", "out"],
        ["recv", "host:a", "host:b/c", "out", "-c", "-z", "-W", "--timeout=9"],
        ["recv", "-e", "ssh -p 1", "--remote-path", "/x/rt", "-o", "--delete", "user@[::1]:x", "."],
    ],
)
def test_the_guess_is_the_far_command_the_parsed_options_make(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RTRANSFER_RSH", raising=False)
    monkeypatch.delenv("RTRANSFER_RELAY", raising=False)
    guessed = early.guess(argv)
    assert guessed is not None
    assert guessed == parsed(argv, monkeypatch)


def test_rsh_from_the_environment_as_the_command_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTRANSFER_RSH", "ssh -p 2022")
    argv = ["send", "f", "host:d/"]
    assert early.guess(argv) == parsed(argv, monkeypatch)
    assert early.guess(argv, {"RTRANSFER_RSH": "ssh -p 2022"}).rsh == ("ssh", "-p", "2022")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--version"],
        ["send", "--help", "f", "host:d"],
        ["send", "-h", "f", "host:d"],
        ["send", "f"],
        ["send", "f", "host:7373"],  # TCP, not ssh
        ["send", "f", "./a:b"],  # a local name
        ["send", "--listen", "7000", "f", "host:d"],
        ["send", "--relay", "r:4001", "f", "host:d"],
        ["send", "--stdio", "f", "host:d"],
        ["send", "-qz", "f", "host:d"],  # combined short flags: left to the command
        ["send", "--bogus", "f", "host:d"],
        ["send", "--json=yes", "f", "host:d"],  # a flag given a value
        ["send", "f", "host:d", "--timeout"],  # a value missing
        ["send", "--timeout", "0", "f", "host:d"],
        ["send", "--timeout", "soon", "f", "host:d"],
        ["send", "--name", "x", "--max-files", "3", "f", "host:d"],  # recv's option on send
        ["recv", "host:a"],  # where to?
        ["recv", "host:a", "other:b", "out"],  # two hosts
        ["recv", "host:a", "local", "out"],
        ["recv", "host:a", "host:out"],
        ["recv", "--connect", "h:1", "host:a", "out"],
        # A value only the command checks: it would refuse it after ssh had started.
        ["send", "--window", "abc", "f", "host:d"],
        ["send", "--chunk-size", "1M", "f", "host:d"],
        ["send", "--exclude", "*.o", "f", "host:d"],
        ["recv", "--exclude-from", "missing", "host:a", "out"],
        ["recv", "--streams", "3", "host:a", "out"],
        ["recv", "--max-files", "x", "host:a", "out"],
        # Standard input or output over ssh: they carry the transfer there.
        ["send", "f", "host:-"],
        ["recv", "host:-", "out"],
        ["send", "-e", "ssh -o 'unbalanced", "f", "host:d"],
        ["join", "--stdio", "/tmp/x"],
    ],
)
def test_no_guess_where_a_word_is_not_plainly_understood(argv: list[str]) -> None:
    assert early.guess(argv, {}) is None


def sleeper(tmp_path: Path, name: str) -> SshCommand:
    """A stand-in for ssh that records its pid and waits."""
    script = f"import os, sys, time; open({str(tmp_path / name)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    return SshCommand((sys.executable, "-c", script), name, ("rtransfer", "recv"), ())


def gone(pid_file: Path) -> bool:
    pid = int(pid_file.read_text())
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text().lower()


def wait_for(path: Path, proc: subprocess.Popen[Any]) -> None:
    """Until ``proc`` has written ``path`` (its first act), or has ended."""
    for _ in range(500):
        if path.exists() and path.read_text():
            return
        try:
            proc.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            continue
        return


def test_a_session_for_other_words_is_stopped_and_the_same_words_kept(tmp_path: Path) -> None:
    first, second = sleeper(tmp_path, "first"), sleeper(tmp_path, "second")
    try:
        ssh_launch.start_early(first)
        started = ssh_launch._early[first.words]
        ssh_launch.start_early(first)  # the same words: the same session
        assert ssh_launch._early[first.words] is started
        wait_for(tmp_path / "first", started[1])
        ssh_launch.start_early(second)
        assert list(ssh_launch._early) == [second.words]
        assert gone(tmp_path / "first")
        ssh_launch.start_early(None)  # not over ssh after all
        assert not ssh_launch._early
    finally:
        ssh_launch.stop_early()


def test_a_session_stopped_hears_sigterm_first(tmp_path: Path) -> None:
    """ssh at a password prompt turns the terminal's echo back on when it is terminated; killed,
    it would leave it off. A stand-in that notes SIGTERM shows which came."""
    marker = tmp_path / "terminated"
    script = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
        f"open({str(tmp_path / 'ready')!r}, 'w').write('1')\n"
        "time.sleep(60)\n"
    )
    ssh = SshCommand((sys.executable, "-c", script), "host", ("rtransfer", "recv"), ())
    started = ssh_launch.start(ssh.rsh, ssh.host, list(ssh.command))
    wait_for(tmp_path / "ready", started[1])
    ssh_launch.stop(started)
    assert marker.exists()


@pytest.mark.parametrize("pidfd", [True, False])
def test_a_session_ending_is_seen_when_it_exits_and_one_that_wont_is_ended(
    pidfd: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh's exit is the last wait of a transfer: seen as it happens (a pidfd), not at Popen's
    next poll, which still serves without one. One that ignores SIGTERM is killed once the grace
    runs out."""
    if not pidfd:
        monkeypatch.delattr(ssh_launch.os, "pidfd_open")
    quick = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    assert not ssh_launch.exited(quick, 0.05)  # still reading
    assert quick.stdin is not None
    quick.stdin.close()
    assert ssh_launch.exited(quick, 60)
    assert quick.returncode == 0
    assert ssh_launch.exited(quick, 0)  # already reaped
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(tmp_path / 'ready')!r}, 'w').write('1')\n"
        "time.sleep(60)\n"
    )
    stubborn = subprocess.Popen([sys.executable, "-c", script])
    wait_for(tmp_path / "ready", stubborn)
    ssh_launch.end(stubborn, 0.0, 0.2)
    assert stubborn.returncode == -signal.SIGKILL


def test_a_session_another_thread_waits_for_is_never_signalled_after_it_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread in ``proc.wait`` holds Popen's lock, and ``poll`` then says "running": ending the
    session must not take that for a process to terminate (its pid may be another's by then)."""
    signalled: list[int] = []
    monkeypatch.setattr(subprocess.Popen, "terminate", lambda self: signalled.append(self.pid))
    for _ in range(10):  # bounded; the old code signalled in about half of the tries
        proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        waiter = threading.Thread(target=proc.wait)
        waiter.start()
        assert proc.stdin is not None
        proc.stdin.close()
        ssh_launch.end(proc, 60.0, 5.0)
        waiter.join(60)
        assert proc.returncode == 0
    assert signalled == []


def test_the_collector_is_off_while_the_program_starts_and_on_while_it_transfers(tmp_path: Path) -> None:
    """Start-up's objects live as long as the process: the collector's passes over them while
    the far side imported were wasted. The loop runs with it on, start-up's objects frozen."""
    probe = (
        "import asyncio, gc, os, sys\n"
        "passes = []\n"
        "gc.callbacks.append(lambda phase, info: passes.append(phase))\n"
        "def loop_starts(*args, **kwargs):\n"
        "    print(len(passes), gc.isenabled(), gc.get_freeze_count() > 0, flush=True)\n"
        "    os._exit(0)\n"
        "asyncio.Runner.run = loop_starts\n"
        "from rtransfer.cli import early\n"
        f"sys.argv = ['rtransfer', 'recv', '--stdio', '--json', '--timeout', '30', '--', {str(tmp_path)!r}]\n"
        "passes.clear()\n"
        "early.main()\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "0 True True\n"), ran.stderr
