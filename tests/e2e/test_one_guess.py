"""One guess at a code per run, whatever the path: a relay (or whoever knows the nameplate, since
the relay's line is in clear) that pairs with the victim, sends a HELLO with a guess, reads the
sealed CONFIRM that tells it whether it guessed right, and closes, gets that one guess: the victim
exits 5 as for a wrong code, and never comes back for another. It had got about 21 (finding 5 of
the trust issue), and every reconnect of a running transfer was one more."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rtransfer.crypto import KeyExchange
from rtransfer.protocol.constants import Role
from rtransfer.protocol.errors import ProtocolError
from rtransfer.protocol.messages import Hello
from rtransfer.protocol.model import Manifest
from rtransfer.protocol.peer import Peer
from rtransfer.protocol.reading import FrameDecoder
from rtransfer.protocol.receiver import ReceiverMachine
from rtransfer.protocol.sender import SenderMachine
from tests.conftest import Proc

GUESS = b"0000-0000-0000"


@dataclass
class FakeRelay:
    """A transit relay that pairs each arriving connection with itself, playing the other role
    with a guessed code, and hangs up once the victim's CONFIRM has told it whether it guessed right."""

    victim_is_sender: bool
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    guesses: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():  # bounded by the test: stopped when it ends
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            with sock:
                sock.settimeout(10)
                self._pair_and_guess(sock)

    def _pair_and_guess(self, sock: socket.socket) -> None:
        line = b""
        while not line.endswith(b"\n") and len(line) < 200:
            byte = sock.recv(1)
            if not byte:
                return
            line += byte
        sock.sendall(b"ok\n")
        machine: Peer = (
            ReceiverMachine(0.0, 30.0, KeyExchange(GUESS, False))
            if self.victim_is_sender
            else SenderMachine(Manifest("f" * 32, 65536, 2), 0.0, 30.0, KeyExchange(GUESS, True))
        )
        for piece in machine.data_to_send():  # its HELLO, with the guess; never its CONFIRM
            sock.sendall(piece)
        for _ in range(20):  # bounded: the victim's HELLO and CONFIRM in
            data = sock.recv(65536)
            if not data:
                return
            try:
                machine.receive_data(data, 0.0)
            except ProtocolError:  # its CONFIRM did not open: the guess is known to be wrong
                self.guesses += 1
                return


@pytest.fixture(params=[False, True], ids=["victim receives", "victim sends"])
def relay(request: pytest.FixtureRequest) -> Iterator[FakeRelay]:
    fake = FakeRelay(victim_is_sender=request.param)
    thread = threading.Thread(target=fake.serve, daemon=True)
    thread.start()
    yield fake
    fake.stopped.set()
    thread.join(timeout=5)
    fake.listener.close()


@pytest.fixture(autouse=True)
def codes_not_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTRANSFER_SECRET", raising=False)


def test_a_relay_that_pairs_and_guesses_gets_one_guess_and_the_victim_exits_5(
    tmp_path: Path, procs: list[Proc], relay: FakeRelay
) -> None:
    (tmp_path / "f").write_bytes(b"secret data")
    args = (
        ["send", str(tmp_path / "f"), "--relay", relay.address, "--code", "7hk2-m9xq-3wfe"]
        if relay.victim_is_sender
        else ["recv", str(tmp_path / "out"), "--relay", relay.address]
    )
    procs.append(victim := Proc([*args, "--json", "--retries", "20", "--retry-max-seconds", "60"]))
    assert victim.finish(timeout_s=60) == 5
    (error,) = victim.events("error")
    assert error["code"] == 5 and "one guess per run" in error["message"]
    assert relay.guesses == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@dataclass
class CuttingRelay:
    """A transit relay that joins the first two connections honestly, cuts them once the transfer is
    under way, and from then on plays the peer to each that comes back, with the right code: if a
    reconnect's key exchange still ran on the code, its CONFIRM would open, and each reconnect the
    relay forces would test a guess."""

    code: bytes
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    cut_after_bytes: int = 4 << 20
    forwarded: int = 0
    comebacks: int = 0
    opened_with_the_code: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def serve(self) -> None:
        self.listener.settimeout(0.2)
        first: list[socket.socket] = []
        while not self.stopped.is_set():  # bounded by the test
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(10)
            _read_line(sock)
            if len(first) < 2:
                first.append(sock)
                if len(first) == 2:
                    threading.Thread(target=self._join_then_cut, args=(first,), daemon=True).start()
                continue
            with sock:
                self._play_the_peer(sock)

    def _join_then_cut(self, pair: list[socket.socket]) -> None:
        for sock in pair:
            sock.sendall(b"ok\n")
        pumps = [threading.Thread(target=self._pump, args=(a, b), daemon=True) for a, b in (pair, pair[::-1])]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join(timeout=60)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while self.forwarded < self.cut_after_bytes and (data := src.recv(65536)):
                dst.sendall(data)
                self.forwarded += len(data)
        except OSError:
            pass
        for sock in (src, dst):
            sock.close()

    def _play_the_peer(self, sock: socket.socket) -> None:
        """The returning side's HELLO, answered as its peer would, keyed by the code; does its CONFIRM open?"""
        sock.sendall(b"ok\n")
        self.comebacks += 1
        hello = sock.recv(65536)
        decoder = FrameDecoder()
        decoder.feed(hello)
        their = next(iter(decoder.frames()))
        assert isinstance(their, Hello)
        # It claims to resume a session (as the victim does), so the victim runs its exchange; keyed by the code.
        machine: Peer = (
            SenderMachine(Manifest("f" * 32, 65536, 2), 0.0, 30.0, KeyExchange(self.code, True, session=True))
            if their.role is Role.RECEIVER
            else ReceiverMachine(0.0, 30.0, KeyExchange(self.code, False, session=True))
        )
        machine.receive_data(hello, 0.0)
        for piece in machine.data_to_send():
            sock.sendall(piece)
        for _ in range(20):  # bounded: until its CONFIRM arrives, or it goes
            data = sock.recv(65536)
            if not data:
                return
            try:
                machine.receive_data(data, 0.0)
            except ProtocolError:
                return  # the CONFIRM did not open with the code
            if machine.keys_proved:
                self.opened_with_the_code += 1
                return


def _read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n") and len(line) < 200:
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line


def test_a_relay_that_cuts_a_running_transfer_never_gets_a_guess_at_the_code(tmp_path: Path, procs: list[Proc]) -> None:
    """Reconnects after the keys are proved pair and key by the session, never the code: a relay
    that forces them and answers as the peer with the right code cannot open a CONFIRM with it."""
    code = "7hk2-m9xq-3wfe"
    relay = CuttingRelay(code.encode())
    thread = threading.Thread(target=relay.serve, daemon=True)
    thread.start()
    try:
        (tmp_path / "f").write_bytes(bytes(64 << 20))
        retry = ["--retries", "4", "--retry-max-seconds", "8", "--no-direct", "--json"]
        procs.append(rx := Proc(["recv", str(tmp_path / "out"), "--relay", relay.address, "--code", code, *retry]))
        sending = ["send", str(tmp_path / "f"), "--relay", relay.address, "--code", code, "--limit-rate", "8M"]
        procs.append(tx := Proc([*sending, *retry]))
        assert tx.finish(timeout_s=90) != 0 and rx.finish(timeout_s=90) != 0  # the relay never lets them meet again
    finally:
        relay.stopped.set()
        thread.join(timeout=5)
        relay.listener.close()
    assert relay.forwarded >= relay.cut_after_bytes and relay.comebacks >= 4  # each side came back, more than once
    assert relay.opened_with_the_code == 0
    said = [e["message"] for p in (tx, rx) for e in p.events("warning")]
    assert any("could not prove this transfer's session" in m for m in said)
