"""Authentication, encryption and hostile peers, with real processes on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rtransfer.crypto import KeyExchange
from rtransfer.protocol.constants import Phase
from rtransfer.protocol.errors import ProtocolError
from rtransfer.protocol.messages import Hello
from rtransfer.protocol.model import Entry, Manifest
from rtransfer.protocol.reading import FrameDecoder
from rtransfer.protocol.sender import SenderMachine
from tests.conftest import TEST_SECRET, Proc, Receiver, run, write_random

MARKER = b"PLAINTEXT-MARKER-7f3a"


@pytest.fixture
def no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTRANSFER_SECRET", raising=False)


@pytest.mark.usefixtures("no_secret")
def test_receiver_shows_a_code_and_the_right_code_succeeds(tmp_path: Path, procs: list[Proc]) -> None:
    data = write_random(tmp_path / "a", 50_000)
    procs.append(rx := Receiver(tmp_path / "out"))
    assert rx.code is not None and len(rx.code) == 14
    result = run("send", str(tmp_path / "a"), rx.address, "--code", rx.code.upper())
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    assert (tmp_path / "out" / "a").read_bytes() == data


@pytest.mark.usefixtures("no_secret")
def test_wrong_code_fails_on_both_sides_with_exit_5_and_writes_nothing(tmp_path: Path, procs: list[Proc]) -> None:
    write_random(tmp_path / "a", 50_000)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", str(tmp_path / "a"), rx.address, "--code", "0000-0000-0000")
    assert result.returncode == 5
    assert "codes do not match" in result.stderr.decode()
    assert rx.finish() == 5
    assert "codes do not match" in rx.events("error")[0]["message"]
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.usefixtures("no_secret")
def test_wrong_code_given_to_a_dialing_receiver_fails_both_sides_with_exit_5(tmp_path: Path, procs: list[Proc]) -> None:
    write_random(tmp_path / "a", 50_000)
    procs.append(tx := Proc(["send", str(tmp_path / "a"), "--listen", "127.0.0.1:0", "--json"]))
    listening = tx.wait_event("listening")
    assert listening["role"] == "send" and listening["code"]
    result = run(
        "recv", str(tmp_path / "out"), "--connect", f"127.0.0.1:{listening['port']}", "--code", "0000-0000-0000"
    )
    assert result.returncode == 5 and "codes do not match" in result.stderr.decode()
    assert tx.finish() == 5
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.usefixtures("no_secret")
def test_a_dialing_receiver_needs_the_code_and_never_listens_too() -> None:
    result = run("recv", "out", "--connect", "127.0.0.1:9")
    assert result.returncode == 2 and "--code" in result.stderr.decode()
    result = run("recv", "out", "--connect", "127.0.0.1:9", "--listen", "9", "--code", "c")
    assert result.returncode == 2 and "either listens or dials" in result.stderr.decode()


@pytest.mark.usefixtures("no_secret")
def test_sender_without_a_code_is_a_usage_error() -> None:
    result = run("send", "x", "127.0.0.1:9")
    assert result.returncode == 2
    assert "--code" in result.stderr.decode()


def through_recording_proxy(tmp_path: Path, procs: list[Proc], *flags: str) -> bytes:
    (tmp_path / "f").write_bytes(MARKER * 5000)
    procs.append(rx := Receiver(tmp_path / "out", *flags))
    wire = tmp_path / "wire.bin"
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.chaos.proxy",
            "--target",
            rx.address,
            "--record",
            str(wire),
            "--max-connections",
            "1",
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proxy.stdout is not None
        port = json.loads(proxy.stdout.readline())["port"]
        result = run("send", str(tmp_path / "f"), f"127.0.0.1:{port}", *flags)
        assert result.returncode == 0, result.stderr
        assert rx.finish() == 0
        proxy.wait(timeout=30)
    finally:
        proxy.kill()
    assert (tmp_path / "out" / "f").read_bytes() == MARKER * 5000
    return wire.read_bytes()


def test_by_default_no_byte_of_file_content_appears_on_the_wire(tmp_path: Path, procs: list[Proc]) -> None:
    wire = through_recording_proxy(tmp_path, procs)
    assert len(wire) > len(MARKER) * 5000
    assert MARKER not in wire
    assert MARKER[:8] not in wire


def test_no_encrypt_really_sends_in_clear_so_the_wire_check_can_fail(tmp_path: Path, procs: list[Proc]) -> None:
    wire = through_recording_proxy(tmp_path, procs, "--no-encrypt")
    assert MARKER in wire


def forged_sender(port: int, entries: tuple[Entry, ...], encrypt: bool = True, raw_after_keys: bytes = b"") -> None:
    """An authenticated peer that declares whatever names we like, and may follow its keys with
    a raw frame no honest sender would make (unencrypted, so it goes as written)."""
    kex = KeyExchange(TEST_SECRET.encode(), True)
    machine = SenderMachine(Manifest("f" * 32, 65536, 4), 0.0, 30.0, kex, encrypt, entries=entries or None)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(50):  # bounded: handshake, then the receiver refuses and closes
            pieces = machine.data_to_send()
            if raw_after_keys and machine.phase is not Phase.GREETING:
                pieces.append(raw_after_keys)
                raw_after_keys = b""
            for piece in pieces:
                s.sendall(piece)
            data = s.recv(65536)
            if not data:
                return
            try:
                machine.receive_data(data, 0.0)
            except ProtocolError:
                return


@pytest.mark.parametrize("name", ["../escape", "/etc/evil", "a/../../b", "nul\x00byte", "a/./b", "a//b"])
def test_unsafe_names_are_refused_with_exit_6_and_nothing_is_written(
    tmp_path: Path, procs: list[Proc], name: str
) -> None:
    procs.append(rx := Receiver(tmp_path / "dest" / "out"))
    forged_sender(rx.port, (Entry(name, "file", 5, 0o644, 0),))
    assert rx.finish() == 6
    (error,) = rx.events("error")
    assert "refusing unsafe name" in error["message"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dest", "out"]


def test_existing_symlink_inside_dest_is_never_written_through(tmp_path: Path, procs: list[Proc]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(outside)
    procs.append(rx := Receiver(tmp_path / "out"))
    forged_sender(rx.port, (Entry("link/pwned", "file", 5, 0o644, 0),))
    assert rx.finish() == 6
    assert "symbolic link" in rx.events("error")[0]["message"]
    assert list(outside.iterdir()) == []


def test_dest_that_is_a_file_exits_6_before_listening(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    result = run("recv", str(tmp_path / "file"), "--listen", "127.0.0.1:0")
    assert result.returncode == 6
    assert "not a directory" in result.stderr.decode()


def test_peer_closing_mid_frame_during_the_handshake_exits_3(tmp_path: Path, procs: list[Proc]) -> None:
    procs.append(rx := Receiver(tmp_path / "out"))
    with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as s:
        s.sendall(b"\x01\x00\x00")  # a third of a frame header
        # Take the receiver's HELLO first: closing with it unread would reset the
        # connection (a different error) instead of closing it.
        decoder = FrameDecoder()
        while not (frames := list(decoder.frames())):
            data = s.recv(65536)
            assert data, "the receiver closed before its HELLO"
            decoder.feed(data)
        assert isinstance(frames[0], Hello)
    assert rx.finish() == 3
    assert "closed by the peer" in rx.events("error")[0]["message"]


def test_declared_size_beyond_free_space_exits_6(tmp_path: Path, procs: list[Proc]) -> None:
    procs.append(rx := Receiver(tmp_path / "out"))
    forged_sender(rx.port, (Entry("huge", "file", 1 << 45, 0o644, 0),))
    assert rx.finish() == 6
    assert "not enough free space" in rx.events("error")[0]["message"]


@pytest.mark.parametrize(
    ("flags", "needle"), [(["--max-bytes", "1000"], "the limit is 1000"), (["--max-files", "1"], "2 entries")]
)
def test_declared_totals_beyond_the_configured_limits_exit_6(
    tmp_path: Path, procs: list[Proc], flags: list[str], needle: str
) -> None:
    procs.append(rx := Receiver(tmp_path / "out", *flags))
    forged_sender(rx.port, (Entry("a", "file", 600, 0o644, 0), Entry("b", "file", 600, 0o644, 0)))
    assert rx.finish() == 6
    assert needle in rx.events("error")[0]["message"]


def test_frame_before_the_handshake_completes_is_refused_with_exit_5(tmp_path: Path, procs: list[Proc]) -> None:
    from rtransfer.protocol.messages import Ack
    from rtransfer.protocol.writing import encode_bytes

    procs.append(rx := Receiver(tmp_path / "out"))
    hello = SenderMachine(Manifest("f" * 32, 65536, 4), 0.0, 30.0, KeyExchange(b"x", True)).data_to_send()
    with socket.create_connection(("127.0.0.1", rx.port)) as s:
        s.sendall(b"".join(bytes(p) for p in hello) + encode_bytes(Ack(0, ())))
        assert rx.finish() == 5
    assert rx.events("error")[0]["code"] == 5


def test_idle_client_is_dropped_when_the_handshake_deadline_passes(tmp_path: Path, procs: list[Proc]) -> None:
    procs.append(rx := Receiver(tmp_path / "out"))
    with socket.create_connection(("127.0.0.1", rx.port)):
        assert rx.finish(timeout_s=30) == 3
    assert "handshake did not complete within 10 s" in rx.events("error")[0]["message"]


def _tree_with_links(tmp_path: Path) -> Path:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "real.txt").write_bytes(b"real")
    (src / "inside").symlink_to("sub/real.txt")
    (src / "sub" / "up").symlink_to("../sub")
    (src / "outside").symlink_to("/etc/passwd")
    (src / "sneaky").symlink_to("../../etc")
    return src


def test_links_arrive_as_they_are_whatever_they_point_to(tmp_path: Path, procs: list[Proc]) -> None:
    src = _tree_with_links(tmp_path)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", str(src), rx.address)
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    out = tmp_path / "out" / "tree"
    assert (out / "inside").is_symlink() and (out / "inside").read_bytes() == b"real"
    assert str((out / "sub" / "up").readlink()) == "../sub"
    assert str((out / "outside").readlink()) == "/etc/passwd"
    assert str((out / "sneaky").readlink()) == "../../etc"


def test_safe_links_skips_links_out_of_the_tree(tmp_path: Path, procs: list[Proc]) -> None:
    src = _tree_with_links(tmp_path)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", str(src), rx.address, "--safe-links")
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    out = tmp_path / "out" / "tree"
    assert (out / "inside").is_symlink() and str((out / "sub" / "up").readlink()) == "../sub"
    assert not (out / "outside").is_symlink() and not (out / "sneaky").is_symlink()
    assert result.stderr.decode().count("points outside the transfer") == 2


def test_a_receiver_with_safe_links_refuses_a_link_out_of_dest(tmp_path: Path, procs: list[Proc]) -> None:
    procs.append(rx := Receiver(tmp_path / "out", "--safe-links"))
    forged_sender(rx.port, (Entry("ln", "symlink", None, 0o777, None, "../../../etc"),))
    assert rx.finish() == 6
    assert "points outside DEST" in rx.events("error")[0]["message"]
    assert not (tmp_path / "out" / "ln").is_symlink()


@pytest.mark.parametrize(
    ("planted", "code"),
    [
        (("d", "../outside"), 6),  # a directory on the way to a file is a link: refused
        (("d/.small.rtpart", "../../outside/small"), 0),  # a small file's partial name is a link: removed
        (("d/.big.rtpart", "../../outside/big"), 0),  # a large file's stale partial (no journal): removed, not followed
    ],
)
def test_links_planted_in_dest_are_never_written_through(
    tmp_path: Path, procs: list[Proc], planted: tuple[str, str], code: int
) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "small").write_bytes(b"s" * 100)
    (src / "d" / "big").write_bytes(os.urandom(3 << 20))
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    link = dest / "src" / planted[0]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(planted[1])
    procs.append(rx := Receiver(dest))
    result = run("send", str(src), rx.address)
    assert rx.finish() == code, result.stderr
    if code:
        assert "symbolic link" in rx.events("error")[0]["message"]
    else:
        assert (dest / "src" / "d" / "big").read_bytes() == (src / "d" / "big").read_bytes()
    assert list(outside.iterdir()) == []
