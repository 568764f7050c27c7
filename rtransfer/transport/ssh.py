"""Reaching a machine over ssh, as rsync and scp do: each connection is an ssh session running
``rtransfer send|recv --stdio`` there, its standard input and output one end of a socket pair
here. ssh authenticates and encrypts, so the protocol runs with no code and no encryption of
its own; the per-chunk checks and the BLAKE3 digests stay.

``open`` returns once the far side has answered (its first bytes arrive): until then ssh may be
asking for a password on the terminal, and nothing is drawn over it. A session that ends
before answering is judged by what ssh and the far side said on standard error and by ssh's
exit status: a lost connection is worth another (OSError), anything else is said once, final.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import shlex
import socket
import subprocess
import threading
from collections.abc import Callable

from rtransfer import __version__
from rtransfer.errors import EXIT_AUTH, HandshakeError, RemoteError, RtransferError, UnknownHost
from rtransfer.transport.source import P, Route, Way, driven
from rtransfer.transport.ssh_launch import SshCommand, end, start, stop, take_early

SSH_CODE = "rtransfer over ssh"  # a placeholder: no code is used over ssh (crypto.TransportExchange)
_KEPT_LINES = 40
_JOINABLE_WAIT_S = 10.0
_EXIT_GRACE_S = 2.0
_TERM_GRACE_S = 5.0
_FINAL = ("permission denied", "host key verification failed", "remote host identification has changed",
          "no such identity", "too many authentication failures")  # fmt: skip
_HEARD = tuple(f'{{"event": "{name}"' for name in ("warning", "item", "joinable"))  # what _read_stderr acts on
_RETRIED = ("connection timed out", "connection reset", "closed by remote host",
            "broken pipe", "network is unreachable", "no route to host", "connection closed")  # fmt: skip


class Ssh(Way):
    """Sessions of ssh to a host, each running ``ssh.command`` there (see SshCommand); ``say``
    reports what the far side warns about."""

    authenticated = True
    server = True
    names_remote_errors = True

    def __init__(
        self,
        ssh: SshCommand,
        say: Callable[[str], None],
        joining: Ssh | None = None,
        tell: Callable[[str, str, bool], None] | None = None,
    ) -> None:
        """``joining``: this source's sessions are further connections of that one's transfer.
        ``tell``: where the far receiver's items go (a dry run's verdicts, --delete's removals)."""
        self.ssh = ssh
        self.tell = tell
        self.joining = joining
        self.joinable: str | None = None  # the far side's socket that further sessions join through
        self._joinable_said = threading.Event()
        self.host = self.where = ssh.host
        self.say = say
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
        self._early = None if joining is not None else take_early(ssh)  # see ssh_launch.start_early

    @property
    def route(self) -> Route:
        return Route.SSH

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        early, self._early = self._early, None
        self.close()
        if early is not None:
            ours, proc = early
        else:
            command = list(self.ssh.command) if self.joining is None else await self.joining.join_command()
            ours, proc = start(self.ssh.rsh, self.host, command)
        self._proc = proc
        self._lines.clear()
        self.joinable = None
        self._joinable_said.clear()
        self._reader = threading.Thread(target=self._read_stderr, args=(proc, asyncio.get_running_loop()), daemon=True)
        self._reader.start()
        ours.setblocking(False)
        try:
            async with asyncio.timeout(wait_s):
                await _readable(ours)
            answered = ours.recv(1, socket.MSG_PEEK) != b""
        except BaseException:
            ours.close()
            raise
        if not answered:
            ours.close()
            rc = await asyncio.to_thread(proc.wait)
            await asyncio.to_thread(self._reader.join, 5)
            failure = self._failure(rc)
            raise await self._too_old() if isinstance(failure, TooOld) else failure
        return await driven(make, ours)

    def _read_stderr(self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        """A thread: keep what the session says; pass on the far side's warnings as they come."""
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._lines.append(line)
            if not line.startswith(_HEARD):  # a tree's file_done lines: thousands, read for nothing
                continue
            with contextlib.suppress(ValueError, AttributeError, RuntimeError):
                event = json.loads(line)
                if event.get("event") == "warning":
                    loop.call_soon_threadsafe(self.say, f"{self.host}: {event['message']}")
                elif event.get("event") == "item" and self.tell is not None:
                    item = (str(event["action"]), str(event["path"]), bool(event["dry_run"]))
                    loop.call_soon_threadsafe(self.tell, *item)
                elif event.get("event") == "joinable":
                    self.joinable = str(event["socket"])
                    self._joinable_said.set()

    def _failure(self, rc: int) -> RtransferError | OSError:
        """Why a session ended before the far side answered."""
        for line in reversed(self._lines):
            with contextlib.suppress(ValueError, AttributeError, KeyError):
                event = json.loads(line)
                if event.get("event") == "error":
                    return _remote_error(self.host, event)
        said = next((line for line in reversed(self._lines) if line and not line.startswith("{")), "")
        lowered = said.lower()
        if rc == 127 or "command not found" in lowered or (rc != 255 and "no such file" in lowered):
            return HandshakeError(
                f"{self.ssh.command[0]} not found on {self.host}: install it there or pass --remote-path"
            )
        if rc == 255 and "could not resolve hostname" in lowered:  # as the TCP form says it: exit 3
            return UnknownHost(said if said.startswith("ssh") else f"ssh {self.host}: {said}")
        if rc == 255 and "connection refused" in lowered:  # final, unless it ever answered (keep_connected)
            return ConnectionRefusedError(errno.ECONNREFUSED, said)
        if rc == 255 and any(mark in lowered for mark in _FINAL):
            return HandshakeError(said if said.startswith("ssh") or self.host in said else f"ssh {self.host}: {said}")
        if rc == 255 and (not said or any(mark in lowered for mark in _RETRIED)):
            return ConnectionResetError(errno.ECONNRESET, said or "the ssh connection ended")
        return HandshakeError(f"ssh {self.host} ended (status {rc}) before rtransfer answered there: {said}")

    async def join_command(self) -> list[str]:
        """What a further session runs: ``rtransfer join`` on the socket this session's far side
        announced (it does so before it answers; the wait covers its line still in the pipe)."""
        if not await asyncio.to_thread(self._joinable_said.wait, _JOINABLE_WAIT_S) or self.joinable is None:
            raise ConnectionResetError(errno.ECONNRESET, f"{self.host}: the transfer there said nowhere to join it")
        return [*self.ssh.join, self.joinable]

    async def _too_old(self) -> HandshakeError:
        """Say both versions: the far side's, as its --version prints it, and ours."""
        asked = [*self.ssh.rsh, self.host, shlex.join([self.ssh.command[0], "--version"])]
        theirs = "an older rtransfer"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            answer = await asyncio.to_thread(subprocess.run, asked, capture_output=True, text=True, timeout=30)
            theirs = answer.stdout.strip() or theirs
        return HandshakeError(
            f"{self.host} has {theirs}, which cannot run over ssh; this is rtransfer {__version__}: upgrade it there"
        )

    def further(self, stream: int) -> Ssh:
        """A further ssh session, whose far side joins this one's (each its own TCP connection;
        with a ControlMaster in the user's ssh config, ssh shares one instead)."""
        return Ssh(self.ssh, self.say, joining=self, tell=self.tell)

    def close(self) -> None:
        """End the session: its far side has finished (it exits once our end of the socket pair
        is closed, and is given a moment to tidy up), or its connection broke."""
        if self._early is not None:  # never opened
            stop(self._early)
            self._early = None
        proc, self._proc = self._proc, None
        if proc is not None:
            end(proc, _EXIT_GRACE_S, _TERM_GRACE_S)


class TooOld(RemoteError):
    """The far side's rtransfer predates ssh transfers (it has no --stdio)."""


def _remote_error(host: str, event: dict[str, object]) -> RemoteError:
    """The far side's own error event, with its exit code, named for its host."""
    message = str(event.get("message", "failed"))
    if "No such option: --stdio" in message:
        return TooOld(message)
    code = event.get("code")
    return RemoteError(f"{host}: {message}", code if isinstance(code, int) else EXIT_AUTH)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
