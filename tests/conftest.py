"""Helpers for end-to-end tests: real rtransfer processes on loopback, waited on by event."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import settings

EVENT_TIMEOUT_S = 30.0

# No per-example deadline (hypothesis' default is 200 ms): on a shared, noisy machine any
# example can stall that long. pytest-timeout bounds every test instead.
settings.register_profile("rtransfer", deadline=None)
settings.load_profile("rtransfer")


def rtransfer_cmd() -> list[str]:
    """The installed entry point when there is one beside this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("rtransfer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rtransfer"]


class Proc:
    """An rtransfer process whose NDJSON events are read by a thread as they arrive."""

    def __init__(
        self, args: list[str], events_on: str = "stdout", command: list[str] | None = None, **popen: Any
    ) -> None:
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        self.proc = subprocess.Popen([*(rtransfer_cmd() if command is None else command), *args], **popen)
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        stream = self.proc.stdout if events_on == "stdout" else self.proc.stderr
        self._other = self.proc.stderr if events_on == "stdout" else None  # read only once the process is gone
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                self.other_lines.append(line)
                continue
            self._events.put(event)
        self._events.put(None)

    def wait_event(self, name: str, timeout_s: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        """Block until the process emits event ``name``; fail if it exits or times out first."""
        while True:
            try:
                event = self._events.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"no {name!r} event within {timeout_s} s; saw {self.seen}") from None
            if event is None:
                raise AssertionError(f"process ended before a {name!r} event; saw {self.seen}")
            self.seen.append(event)
            if event.get("event") == name:
                return event

    def finish(self, timeout_s: float = 60.0) -> int:
        """The exit code; a process still running after ``timeout_s`` is killed, and the failure says
        where it stood (its last events, and its standard error when that isn't where events go)."""
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._thread.join(timeout=5)
            self.drain()
            err = self._other.read().decode("utf-8", "replace")[-1500:] if self._other is not None else ""
            raise AssertionError(
                f"still running after {timeout_s} s; last events {self.seen[-5:]}; stderr {err}"
            ) from None
        self._thread.join(timeout=5)
        self.drain()
        return rc

    def drain(self) -> None:
        """Move the events that have arrived so far into ``seen``."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if event is not None:
                self.seen.append(event)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e.get("event") == name]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Receiver(Proc):
    def __init__(
        self, dest: Path | str, *args: str, events_on: str = "stdout", listen: str = "127.0.0.1:0", **popen: Any
    ) -> None:
        super().__init__(["recv", str(dest), "--listen", listen, "--json", *args], events_on, **popen)
        listening = self.wait_event("listening")
        self.port = int(listening["port"])
        self.code: str | None = listening.get("code")
        self.address = f"127.0.0.1:{self.port}"


def run(*args: str, input_bytes: bytes | None = None, timeout_s: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*rtransfer_cmd(), *args], input=input_bytes, capture_output=True, timeout=timeout_s)


TEST_SECRET = "e2e-shared-secret"


@pytest.fixture(autouse=True)
def shared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides read RTRANSFER_SECRET (the scripting path); code tests unset it."""
    monkeypatch.setenv("RTRANSFER_SECRET", TEST_SECRET)


@pytest.fixture
def procs() -> Any:
    """Processes a test starts; any still running at the end are killed."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def random_source(factory: pytest.TempPathFactory, size: int) -> tuple[Path, str]:
    """A file of random bytes for a module's tests to share, and its BLAKE3 digest."""
    path = factory.mktemp("source") / "data.bin"
    return path, blake3.blake3(write_random(path, size)).hexdigest()


class ChaosProxy(Proc):
    """tests/chaos/proxy.py in front of a receiver; its fault events are in ``seen``."""

    def __init__(self, target: str, *faults: str) -> None:
        root = Path(__file__).resolve().parents[1]
        super().__init__(
            ["--target", target, *faults],
            command=[sys.executable, "-m", "tests.chaos.proxy"],
            cwd=root,
        )
        self.port = int(self.wait_event("listening")["port"])
        self.address = f"127.0.0.1:{self.port}"

    def faults(self, name: str) -> int:
        self.drain()
        return len(self.events(name))
