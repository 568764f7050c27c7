"""Two homes behind NAT, direct: each learns its mapping from coturn (--stun), both punch at the
moment agreed over the relay, and the transfer moves to the punched connection; through every
kind of router (tests/chaos/internet.py), with the path appearing late or breaking mid-way."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.chaos import internet
from tests.chaos.test_relay import at, codes_not_secrets, net, payload, relay, shows_code
from tests.conftest import Proc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
__all__ = ["codes_not_secrets", "net", "relay"]  # test_relay.py's fixtures, used here too
SIZE = 8 * 1024 * 1024


@pytest.fixture
def nat(relay: internet.Internet) -> internet.Internet:
    """test_relay.py's relay (a fresh recording proxy in front of it), with coturn, routers of the
    RST kind and no cut."""
    try:
        relay.start_stun()
    except internet.Unavailable as exc:
        pytest.skip(str(exc))
    for side in ("a", "b"):
        relay.router(side, "rst")
    relay.cut(False)
    return relay


@pytest.fixture(autouse=True)
def no_stun_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTRANSFER_STUN", raising=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pair(
    net: internet.Internet,
    procs: list[Proc],
    tmp_path: Path,
    source: Path,
    *extra: str,
    sender_in: str = "a",
    stun: bool = True,
    sending: tuple[str, ...] = (),
) -> tuple[Proc, Proc]:
    """A receiver in one home, a sender in the other, through the relay (with --stun, both)."""
    home = {"a": net.home_a, "b": net.home_b}
    stun_args = net.stun_args if stun else []
    rx_home = "b" if sender_in == "a" else "a"
    rx = at(home[rx_home], procs, "recv", str(tmp_path / "out"), "--relay", net.relay_address, *stun_args, *extra)
    code = shows_code(rx, net)
    tx = at(
        home[sender_in], procs, "send", str(source), "--relay", net.relay_address, "--code", code, *stun_args, *sending
    )
    return tx, rx


def relayed_bytes(net: internet.Internet) -> int:
    return net.stop_proxy()[0]


@pytest.mark.parametrize("kind", ["rst", "drop"])
@pytest.mark.parametrize("sender_in", ["a", "b"])
def test_both_homes_behind_nat_punch_through_and_the_relay_carries_almost_nothing(
    tmp_path: Path, procs: list[Proc], nat: internet.Internet, kind: str, sender_in: str
) -> None:
    for side in ("a", "b"):
        nat.router(side, kind)
    source = payload(tmp_path, SIZE)
    tx, rx = pair(nat, procs, tmp_path, source, sender_in=sender_in)
    assert tx.finish() == 0 and rx.finish() == 0
    assert digest(tmp_path / "out" / "plain.bin") == digest(source)
    moved = tx.events("moved")
    assert moved and moved[0]["from"] == "relay" and moved[0]["how"] == "punched", tx.seen
    assert rx.events("moved")[0]["how"] == "punched"
    assert tx.events("done")[0]["path"] == "direct"
    assert relayed_bytes(nat) < SIZE // 100


def test_a_nat_that_maps_at_random_keeps_the_transfer_on_the_relay_and_says_why(
    tmp_path: Path, procs: list[Proc], nat: internet.Internet
) -> None:
    nat.router("b", "random")
    source = payload(tmp_path, SIZE)
    tx, rx = pair(nat, procs, tmp_path, source, "-v")
    assert tx.finish() == 0 and rx.finish() == 0
    assert digest(tmp_path / "out" / "plain.bin") == digest(source)
    assert not tx.events("moved") and tx.events("done")[0]["path"] == "relay"
    reasons = [e["reason"] for e in rx.events("direct_failed")]
    assert any("maps randomly" in r for r in reasons), reasons
    assert relayed_bytes(nat) >= SIZE


def test_without_stun_two_homes_stay_on_the_relay_as_before(
    tmp_path: Path, procs: list[Proc], nat: internet.Internet
) -> None:
    source = payload(tmp_path, SIZE)
    tx, rx = pair(nat, procs, tmp_path, source, stun=False)
    assert tx.finish() == 0 and rx.finish() == 0
    assert digest(tmp_path / "out" / "plain.bin") == digest(source)
    assert not tx.events("moved") and tx.events("done")[0]["path"] == "relay"
    assert [e["reason"] for e in rx.events("direct_failed")][:1] == [
        "no STUN server (--stun): only listening addresses were tried"
    ]


def test_four_streams_of_a_tree_all_punch_through(tmp_path: Path, procs: list[Proc], nat: internet.Internet) -> None:
    tree = tmp_path / "tree"
    for n in range(40):
        (tree / f"d{n % 4}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{n % 4}" / f"f{n}").write_bytes(bytes([n]) * (n * 40_000))
    (tree / "big.bin").write_bytes(payload(tmp_path, SIZE).read_bytes())
    rx = at(nat.home_b, procs, "recv", str(tmp_path / "out"), "--relay", nat.relay_address, *nat.stun_args)
    code = shows_code(rx, nat)
    tx = at(
        nat.home_a, procs, "send", str(tree), "--relay", nat.relay_address, "--code", code,
        *nat.stun_args, "--streams", "4",
    )  # fmt: skip
    assert tx.finish() == 0 and rx.finish() == 0
    for path in tree.rglob("*"):
        if path.is_file():
            assert (tmp_path / "out" / "tree" / path.relative_to(tree)).read_bytes() == path.read_bytes()
    assert tx.events("moved")[0]["how"] == "punched" and tx.events("done")[0]["path"] == "direct"
    assert relayed_bytes(nat) < (SIZE + 40 * 20 * 40_000) // 100


def test_the_relay_killed_while_the_transfer_is_direct_changes_nothing(
    tmp_path: Path, procs: list[Proc], nat: internet.Internet
) -> None:
    source = payload(tmp_path, SIZE)
    tx, rx = pair(nat, procs, tmp_path, source)
    assert tx.wait_event("moved")["how"] == "punched"
    nat.kill_relay()
    assert tx.finish() == 0 and rx.finish() == 0
    assert digest(tmp_path / "out" / "plain.bin") == digest(source)


def test_a_path_that_appears_mid_transfer_is_taken_and_one_that_breaks_falls_back_to_the_relay(
    tmp_path: Path, procs: list[Proc], nat: internet.Internet
) -> None:
    """Cut at first: the transfer starts relayed; the cut lifted, it moves to a punched path; cut
    again, it goes back to the relay within --timeout, and arrives identical."""
    nat.cut(True)
    source = payload(tmp_path, 4 * SIZE)
    rx = at(
        nat.home_b, procs, "recv", str(tmp_path / "out"), "--relay", nat.relay_address, *nat.stun_args,
        "--timeout", "3",
    )  # fmt: skip
    code = shows_code(rx, nat)
    tx = at(
        nat.home_a, procs, "send", str(source), "--relay", nat.relay_address, "--code", code,
        *nat.stun_args, "--limit-rate", "2M", "--timeout", "3",
    )  # fmt: skip
    tx.wait_event("progress")
    nat.cut(False)
    assert tx.wait_event("moved", timeout_s=15)["how"] == "punched"
    nat.cut(True)
    back = tx.wait_event("moved", timeout_s=15)
    assert back["to"] == "relay" and back["how"] == "relay"
    assert tx.finish(timeout_s=90) == 0 and rx.finish() == 0
    assert digest(tmp_path / "out" / "plain.bin") == digest(source)


@pytest.mark.parametrize("killed", ["sender", "receiver"])
def test_either_side_killed_while_punched_and_both_run_again_resume(
    tmp_path: Path, procs: list[Proc], nat: internet.Internet, killed: str
) -> None:
    source = payload(tmp_path, 4 * SIZE)
    tx, rx = pair(nat, procs, tmp_path, source, "--timeout", "3", sending=("--limit-rate", "8M"))
    assert tx.wait_event("moved")["how"] == "punched"
    tx.wait_event("progress")
    (tx if killed == "sender" else rx).kill()
    (rx if killed == "sender" else tx).kill()
    nat.stop_proxy()
    nat.start_proxy()
    tx, rx = pair(nat, procs, tmp_path, source)
    assert tx.finish() == 0 and rx.finish() == 0
    assert digest(tmp_path / "out" / "plain.bin") == digest(source)
    assert tx.events("moved")[0]["how"] == "punched"
