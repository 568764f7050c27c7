"""Starting ssh: the command a session runs, its process, and the first session started before
the rest of the program is imported. Light on purpose (no asyncio, no msgspec): the entry
point starts ssh from here within milliseconds (cli/early.py), so ssh's connection and the far
side's start-up overlap this side's."""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import socket
import subprocess
from typing import NamedTuple

from rtransfer.errors import UsageError


class SshCommand(NamedTuple):
    """Run ``command`` on ``host`` with ``rsh`` (ssh and its options), for each connection; a
    further connection runs ``join`` and the socket the first one's far side names."""

    rsh: tuple[str, ...]
    host: str
    command: tuple[str, ...]
    join: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        """What identifies a session: the same words, the same far side."""
        return (*self.rsh, self.host, *self.command)


_TERM_GRACE_S = 1.0
Started = tuple[socket.socket, "subprocess.Popen[bytes]"]  # our end of the session's socket pair, and ssh


def start(rsh: tuple[str, ...], host: str, command: list[str]) -> Started:
    """Run ssh, its standard input and output one end of a socket pair."""
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen(
            [*rsh, host, shlex.join(command)], stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.PIPE
        )
    except OSError as exc:
        ours.close()
        raise UsageError(f"cannot run {rsh[0]}: {exc.strerror or exc}") from None
    finally:
        theirs.close()
    return ours, proc


def stop(started: Started) -> None:
    """End a session never used. SIGTERM first: ssh at a password prompt puts the terminal's echo
    back on its way out, where SIGKILL would leave it off (and what the user types next shown)."""
    ours, proc = started
    ours.close()
    end(proc, 0.0, _TERM_GRACE_S)


def end(proc: subprocess.Popen[bytes], grace_s: float, term_grace_s: float) -> None:
    """Let ``proc`` exit within ``grace_s``, then SIGTERM it and give it ``term_grace_s``, then SIGKILL."""
    if not exited(proc, grace_s):
        proc.terminate()
        if not exited(proc, term_grace_s):
            proc.kill()
            proc.wait()


def exited(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether ``proc`` exits within ``timeout_s``, known the moment it does: Popen.wait(timeout)
    polls with sleeps growing to 50 ms, and ssh's exit is the last wait of every transfer over ssh.
    Once the pidfd says it exited, ``wait`` reaps it, or waits for a thread already in ``wait``
    (whose lock makes ``poll`` say "running")."""
    if proc.returncode is not None:
        return True
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):  # reaped meanwhile, or no pidfd (not Linux, before 5.3): Popen's polling
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
        return proc.returncode is not None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(max(timeout_s, 0) * 1000):
            return False
    finally:
        os.close(pidfd)
    proc.wait()
    return True


_early: dict[tuple[str, ...], Started] = {}  # first sessions started ahead of their Ssh, by their words


def start_early(ssh: SshCommand | None) -> None:
    """The first session of ``ssh``, started now unless it already is: its Ssh takes it up at its
    first ``open``. One started for other words (the entry point's guess, cli/early.py) is
    stopped: the options as parsed decide."""
    keep = ssh.words if ssh is not None else None
    for words in [w for w in _early if w != keep]:
        stop(_early.pop(words))
    if ssh is not None and keep not in _early:
        _early[ssh.words] = start(ssh.rsh, ssh.host, list(ssh.command))


def stop_early() -> None:
    """Sessions started early that the command won't use (its options failed after all)."""
    while _early:
        stop(_early.popitem()[1])


def take_early(ssh: SshCommand) -> Started | None:
    """The session started early for ``ssh``, if any, now the caller's to run or stop."""
    return _early.pop(ssh.words, None)
