"""A transfer over several connections through faults aimed at some of them."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import pytest

from tests.conftest import ChaosProxy, Proc, Receiver, random_source, run

SIZE = 128 * 1024 * 1024
CHUNK = 512 * 1024
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return random_source(tmp_path_factory, SIZE)


def send_through(proxy: ChaosProxy, src: Path, *extra: str) -> dict[str, object]:
    result = run(
        "send", str(src), proxy.address, "--json", "--streams", "4", "--chunk-size", "512K", "--retries", "40", *extra,
        timeout_s=150,
    )  # fmt: skip
    said = [line for line in result.stdout.decode().splitlines() if '"event": "progress"' not in line]
    assert result.returncode == 0, "\n".join(said[-12:])  # the error and the warnings before it, whole
    assert b"Traceback" not in result.stderr
    done: dict[str, object] = json.loads(result.stdout.decode().splitlines()[-1])
    return done


def test_further_connections_reset_again_and_again_still_deliver_every_byte_once(
    tmp_path: Path, procs: list[Proc], source: tuple[Path, str]
) -> None:
    src, digest = source
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(proxy := ChaosProxy(rx.address, "--reset-every", "16M", "--spare-first"))
    done = send_through(proxy, src)
    assert rx.finish() == 0
    assert blake3.blake3((tmp_path / "out" / "data.bin").read_bytes()).hexdigest() == digest
    resets = proxy.faults("reset")
    assert resets >= 3 and done["reconnects"] >= resets  # each further connection came back
    resent = int(done["retransmits"]) * CHUNK  # chunks dealt again after a reset, at most a chunk each
    assert resent < SIZE * 0.10, (resets, resent)


def test_every_connection_reset_again_and_again_first_included_still_completes(
    tmp_path: Path, procs: list[Proc], source: tuple[Path, str]
) -> None:
    """Losing the first connection restarts the transfer's attempt, and its further connections end
    with it. (A send loop that swallowed its cancel once hung such a run, 1 in 7 at 1 GiB; this
    smaller run rarely hits that race, so it guards the scenario, not that exact timing.)"""
    src, digest = source
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(proxy := ChaosProxy(rx.address, "--reset-every", "16M"))
    done = send_through(proxy, src)
    assert rx.finish() == 0
    assert blake3.blake3((tmp_path / "out" / "data.bin").read_bytes()).hexdigest() == digest
    assert proxy.faults("reset") >= 2 and int(done["reconnects"]) >= 1


def test_a_connection_that_goes_silent_costs_its_chunks_not_the_transfer(
    tmp_path: Path, procs: list[Proc], source: tuple[Path, str]
) -> None:
    """A further connection stops forwarding (a dead path, no reset): its chunks go out again on the others."""
    src, digest = source
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(proxy := ChaosProxy(rx.address, "--blackhole-connection", "2", "--blackhole-after", "4M"))
    send_through(proxy, src, "--timeout", "5")
    assert rx.finish() == 0
    assert blake3.blake3((tmp_path / "out" / "data.bin").read_bytes()).hexdigest() == digest
    assert proxy.faults("blackhole") == 1


def test_a_receiver_limited_to_fewer_connections_refuses_the_transfer(tmp_path: Path, procs: list[Proc]) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    procs.append(rx := Receiver(tmp_path / "out", "--max-streams", "2"))
    result = run("send", str(tmp_path / "a.bin"), rx.address, "--streams", "4")
    assert result.returncode == 6
    assert rx.finish() == 6
    assert "the limit is 2" in rx.events("error")[0]["message"]


def test_progress_reports_each_connection_its_rate_load_and_whether_it_is_fed(
    tmp_path: Path, procs: list[Proc], source: tuple[Path, str]
) -> None:
    """Capped at 12 MiB/s a connection, the 128 MiB take about three seconds: progress events (one a
    second) come in between."""
    src, digest = source
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(proxy := ChaosProxy(rx.address, "--rate", "12M"))
    result = run(
        "send", str(src), proxy.address, "--json", "--streams", "4", "--chunk-size", "512K", timeout_s=150
    )  # fmt: skip
    assert result.returncode == 0 and rx.finish() == 0
    assert blake3.blake3((tmp_path / "out" / "data.bin").read_bytes()).hexdigest() == digest
    progress = [e for e in map(json.loads, result.stdout.decode().splitlines()) if e["event"] == "progress"]
    per_stream = [e["streams"] for e in progress if len(e.get("streams", ())) == 4]
    assert per_stream, progress
    fields = {"stream", "path", "rate_bps", "in_flight_bytes", "queued_bytes", "stalled", "paused"}
    assert all(set(s) == fields for streams in per_stream for s in streams)
    assert any(s["rate_bps"] > 0 for s in per_stream[-1])
    assert all(e["rss_bytes"] > 0 and e["open_fds"] > 0 for e in progress)
