"""Through the real magic-wormhole transit relay, in a small internet of network namespaces
(tests/chaos/internet.py): two homes behind masquerading routers, neither of which can accept
a connection, meet at the relay. What reaches the relay is recorded by a proxy in front of it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import internet
from tests.chaos.netns import in_ns
from tests.conftest import Proc, rtransfer_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
SIZE = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def net() -> Iterator[internet.Internet]:
    try:
        with internet.small_internet() as made:
            made.start_relay()
            yield made
    except internet.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def relay(net: internet.Internet, tmp_path: Path) -> Iterator[internet.Internet]:
    """The relay with a fresh recording proxy in front of it, for one test."""
    if net.relay is None or net.relay.poll() is not None:
        net.start_relay()
    net.start_proxy(record=tmp_path / "relay.bin")
    yield net
    if net.proxy is not None and net.proxy.poll() is None:
        net.proxy.kill()
        net.proxy.wait(timeout=10)


@pytest.fixture(autouse=True)
def codes_not_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTRANSFER_SECRET", raising=False)


def at(ns: str, procs: list[Proc], *args: str) -> Proc:
    procs.append(proc := Proc([*args, "--json"], command=in_ns(ns, *rtransfer_cmd())))
    return proc


def shows_code(proc: Proc, relay: internet.Internet) -> str:
    listening = proc.wait_event("listening")
    assert listening["relay"] == relay.relay_address and "port" not in listening
    return str(listening["code"])


def payload(tmp_path: Path, size: int = SIZE) -> Path:
    """A file whose every 4 KiB block is marked, so that a leak of any part shows in the record."""
    path = tmp_path / "plain.bin"
    block = b"PLAINTEXT-MARKER" + os.urandom(16)
    path.write_bytes(block * (size // len(block)))
    return path


def test_nat_to_nat_through_the_relay_is_identical_and_the_relay_sees_no_plaintext(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet
) -> None:
    source = payload(tmp_path)
    rx = at(relay.home_b, procs, "recv", str(tmp_path / "out"), "--relay", relay.relay_address)
    code = shows_code(rx, relay)
    tx = at(relay.home_a, procs, "send", str(source), "--relay", relay.relay_address, "--code", code)
    assert tx.finish() == 0 and rx.finish() == 0
    assert (tmp_path / "out" / "plain.bin").read_bytes() == source.read_bytes()
    assert relay.stop_proxy()[0] >= SIZE
    recorded = (tmp_path / "relay.bin").read_bytes()
    assert len(recorded) >= SIZE
    assert b"PLAINTEXT-MARKER" not in recorded and b"plain.bin" not in recorded
    assert code.encode() not in recorded and code.rsplit("-", 1)[1].encode() not in recorded


def test_rules_that_exclude_everything_are_a_transfer_of_nothing_through_the_relay(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet
) -> None:
    rx = at(relay.home_b, procs, "recv", str(tmp_path / "out"), "--relay", relay.relay_address)
    code = shows_code(rx, relay)
    source = payload(tmp_path, 4096)
    tx = at(relay.home_a, procs, "send", str(source), "--relay", relay.relay_address, "--code", code, "--exclude", "*")
    assert tx.finish() == 0 and rx.finish() == 0
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_neither_home_can_reach_the_other(relay: internet.Internet) -> None:
    """The premise: the routers let nothing in, so only the relay joins them."""
    assert internet.reachable(relay.home_a, internet.RELAY_ADDR, internet.RELAY_PORT)
    assert not internet.reachable(relay.public, "198.51.100.2", 22)
    assert not internet.reachable(relay.home_a, "10.2.0.2", 22)


def test_a_wrong_code_through_the_relay_fails_both_sides_with_exit_5(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet
) -> None:
    rx = at(relay.home_b, procs, "recv", str(tmp_path / "out"), "--relay", relay.relay_address)
    code = shows_code(rx, relay)
    wrong = code[:-4] + ("zzzz" if not code.endswith("zzzz") else "yyyy")  # right nameplate, wrong secret
    tx = at(relay.home_a, procs, "send", str(payload(tmp_path)), "--relay", relay.relay_address, "--code", wrong)
    assert tx.finish() == 5 and rx.finish() == 5
    assert tx.events("error")[0]["kind"] == "handshake"
    assert not (tmp_path / "out").exists()


def test_a_stranger_at_the_relay_is_refused_and_nothing_is_written(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet
) -> None:
    """Someone else's client under the same token (a nameplate clash, or an operator pairing us on
    purpose) gets an authentication error, never a transfer."""
    from rtransfer.transport.relay import code_token

    rx = at(relay.home_b, procs, "recv", str(tmp_path / "out"), "--relay", relay.relay_address)
    code = shows_code(rx, relay)
    stranger = (
        "import socket, sys\n"
        "s = socket.create_connection(sys.argv[1].split(':'))\n"
        "s.sendall(f'please relay {sys.argv[2]} for side {16 * \"5\"}\\n'.encode())\n"
        "assert s.recv(3) == b'ok\\n'\n"
        "s.sendall(bytes(range(256)) * 64)\n"
        "s.recv(1 << 16)\n"
    )
    host, port = relay.relay_address.split(":")
    subprocess.run(in_ns(relay.home_a, "python3", "-c", stranger, f"{host}:{port}", code_token(code)), timeout=60)
    assert rx.finish() == 5
    assert rx.events("error")[0]["kind"] == "handshake"
    assert not (tmp_path / "out").exists()


def test_a_sender_with_no_receiver_at_the_relay_gives_up_after_its_window(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet
) -> None:
    tx = at(
        relay.home_a,
        procs,
        "send",
        str(payload(tmp_path, 4096)),
        "--relay",
        relay.relay_address,
        "--code",
        "7hk2-m9xq-3wfe",
        "--retry-max-seconds",
        "2",
    )
    assert tx.finish() == 3
    assert "no receiver is waiting for that code at relay" in tx.events("error")[0]["message"]


def test_four_streams_and_a_tree_the_other_way_round_through_the_relay(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet
) -> None:
    """The sender shows the code and the receiver is given it; four connections pair at the relay."""
    tree = tmp_path / "tree"
    for i in range(20):
        (tree / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 3}" / f"f{i}").write_bytes(os.urandom(1000 * i))
    (tree / "big.bin").write_bytes(os.urandom(SIZE))
    tx = at(relay.home_a, procs, "send", str(tree), "--relay", relay.relay_address, "--streams", "4")
    code = shows_code(tx, relay)
    rx = at(relay.home_b, procs, "recv", str(tmp_path / "out"), "--relay", relay.relay_address, "--code", code)
    assert rx.finish() == 0 and tx.finish() == 0
    for path in tree.rglob("*"):
        if path.is_file():
            assert (tmp_path / "out" / "tree" / path.relative_to(tree)).read_bytes() == path.read_bytes()
    assert relay.stop_proxy()[1] == 8  # four connections from each side, paired


def wait_for_bytes(proc: Proc, at_least: int) -> None:
    """Until ``proc`` reports that many bytes done (its progress events, once a second)."""
    for _ in range(60):  # bounded: a progress event a second
        if int(proc.wait_event("progress")["bytes"]) >= at_least:
            return
    raise AssertionError(f"never reached {at_least} bytes")


RATE_OPTIONS = ("--limit-rate", "8M")


def test_the_relay_killed_and_started_again_mid_transfer_resumes(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet
) -> None:
    source = payload(tmp_path, 4 * SIZE)
    rx = at(relay.home_b, procs, "recv", str(tmp_path / "out"), "--relay", relay.relay_address)
    code = shows_code(rx, relay)
    tx = at(relay.home_a, procs, "send", str(source), "--relay", relay.relay_address, "--code", code, *RATE_OPTIONS)
    wait_for_bytes(tx, SIZE)
    relay.kill_relay()
    relay.start_relay()
    assert tx.finish() == 0 and rx.finish() == 0
    assert (tmp_path / "out" / "plain.bin").read_bytes() == source.read_bytes()
    assert tx.events("done")[0]["reconnects"] >= 1 and rx.events("done")[0]["reconnects"] >= 1
    into_relay, _ = relay.stop_proxy()
    assert into_relay <= 1.25 * 4 * SIZE  # resumed, not started again


@pytest.mark.parametrize("killed", ["sender", "receiver"])
def test_either_side_killed_while_relayed_resumes_when_both_run_again(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet, killed: str
) -> None:
    """The side still running keeps coming back to the relay, for the peer it proved its session
    with, and only for it: a new run with the code is not let in (that would be a second guess at
    the code, one a relay could fake at will). Run again, both resume where the partial file ends."""
    source = payload(tmp_path, 4 * SIZE)
    recv_args = ["recv", str(tmp_path / "out"), "--relay", relay.relay_address]
    rx = at(relay.home_b, procs, *recv_args)
    code = shows_code(rx, relay)
    send_args = ["send", str(source), "--relay", relay.relay_address, "--code", code, *RATE_OPTIONS]
    tx = at(relay.home_a, procs, *send_args)
    wait_for_bytes(tx, SIZE)
    (tx if killed == "sender" else rx).kill()
    survivor = rx if killed == "sender" else tx
    survivor.wait_event("warning")  # it has seen its peer go, and comes back to the relay for it
    survivor.kill()
    rx = at(relay.home_b, procs, *recv_args, "--code", code)
    tx = at(relay.home_a, procs, *send_args)
    assert tx.finish() == 0 and rx.finish() == 0
    assert (tmp_path / "out" / "plain.bin").read_bytes() == source.read_bytes()
    into_relay, _ = relay.stop_proxy()
    assert into_relay <= 1.5 * 4 * SIZE  # resumed, not started again


@pytest.mark.parametrize(("public", "streams"), [("receiver", "1"), ("sender", "3")])
def test_with_one_side_public_the_transfer_goes_direct_and_the_relay_carries_little(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet, public: str, streams: str
) -> None:
    """The side behind NAT dials the public one's address (said inside the session), and its
    further connections too; the relay carries the handshake and the addresses, nothing of the file."""
    source = payload(tmp_path)
    rx_ns, tx_ns = (relay.public, relay.home_a) if public == "receiver" else (relay.home_a, relay.public)
    rx = at(rx_ns, procs, "recv", str(tmp_path / "out"), "--relay", relay.relay_address)
    code = shows_code(rx, relay)
    tx = at(tx_ns, procs, "send", str(source), "--relay", relay.relay_address, "--code", code, "--streams", streams)
    assert tx.finish() == 0 and rx.finish() == 0
    per_stream = [e["streams"] for e in tx.seen if e.get("event") in ("progress", "done") and e.get("streams")]
    assert streams == "1" or (per_stream and all(s["path"] == "direct" for s in per_stream[-1]))
    assert (tmp_path / "out" / "plain.bin").read_bytes() == source.read_bytes()
    into_relay, _ = relay.stop_proxy()
    assert into_relay <= 0.10 * SIZE
    for side in (tx, rx):
        done = side.events("done")[0]
        assert done["path"] == "direct" and done["reconnects"] == 0 and done["relay_bytes"] < 0.10 * SIZE


def test_no_direct_keeps_every_byte_on_the_relay(tmp_path: Path, procs: list[Proc], relay: internet.Internet) -> None:
    source = payload(tmp_path)
    rx = at(relay.public, procs, "recv", str(tmp_path / "out"), "--relay", relay.relay_address, "--no-direct")
    code = shows_code(rx, relay)
    tx = at(relay.home_a, procs, "send", str(source), "--relay", relay.relay_address, "--code", code)
    assert tx.finish() == 0 and rx.finish() == 0
    into_relay, _ = relay.stop_proxy()
    assert into_relay >= SIZE
    assert tx.events("done")[0]["path"] == "relay" and rx.events("done")[0]["relay_bytes"] >= SIZE


def test_a_shared_secret_meets_at_the_relay_through_scrypt_and_never_shows(
    tmp_path: Path, procs: list[Proc], relay: internet.Internet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--secret (here from the environment) on both sides: no code is shown, the token the relay
    sees is the secret stretched by scrypt, and neither appears on the wire."""
    from rtransfer.transport.relay import code_token

    secret = "relay-test-secret-" + os.urandom(4).hex()
    monkeypatch.setenv("RTRANSFER_SECRET", secret)
    source = payload(tmp_path)
    rx = at(relay.home_b, procs, "recv", str(tmp_path / "out"), "--relay", relay.relay_address)
    assert rx.wait_event("listening")["code"] is None
    tx = at(relay.home_a, procs, "send", str(source), "--relay", relay.relay_address, "--streams", "2")
    assert tx.finish() == 0 and rx.finish() == 0
    assert (tmp_path / "out" / "plain.bin").read_bytes() == source.read_bytes()
    relay.stop_proxy()
    recorded = (tmp_path / "relay.bin").read_bytes()
    assert code_token(secret).encode() in recorded  # what the relay learns: the stretched secret
    assert secret.encode() not in recorded and b"PLAINTEXT-MARKER" not in recorded
