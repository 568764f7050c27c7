"""The sender listens and the receiver dials it (send --listen, recv --connect): trees, streams,
and resume after kill -9 of either side, as in the usual direction."""

from __future__ import annotations

import random
from pathlib import Path

import blake3
import pytest

from tests.chaos.test_kill import CHUNK, SIZE, check_output, free_port, wait_for_partial
from tests.conftest import Proc, random_source

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return random_source(tmp_path_factory, SIZE)


class ListeningSender(Proc):
    def __init__(self, *args: str, listen: str = "127.0.0.1:0") -> None:
        super().__init__(["send", *args, "--listen", listen, "--json", "--chunk-size", "256K", "--retries", "40"])
        event = self.wait_event("listening")
        assert event["role"] == "send"
        self.port = int(event["port"])


def dialing_receiver(dest: Path, port: int, *extra: str) -> Proc:
    return Proc(["recv", str(dest), "--connect", f"127.0.0.1:{port}", "--json", "--retries", "40", *extra])


def test_a_tree_arrives_identical_when_the_receiver_dials(tmp_path: Path, procs: list[Proc]) -> None:
    tree = tmp_path / "tree"
    files = {f"d{i % 4}/f{i}": random.Random(i).randbytes(i * 911) for i in range(60)}
    files["big.bin"] = random.Random(99).randbytes(3 * 1024 * 1024 + 5)
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    (tree / "empty-dir").mkdir()
    (tree / "link").symlink_to("big.bin")
    procs.append(tx := ListeningSender(str(tree)))
    procs.append(rx := dialing_receiver(tmp_path / "out", tx.port))
    assert rx.finish() == 0 and tx.finish() == 0
    for name, data in files.items():
        assert (tmp_path / "out" / "tree" / name).read_bytes() == data
    assert (tmp_path / "out" / "tree" / "empty-dir").is_dir()
    assert (tmp_path / "out" / "tree" / "link").readlink() == Path("big.bin")


@pytest.mark.parametrize("streams", [1, 4])
def test_a_dialing_receiver_killed_and_both_started_again_resume(
    tmp_path: Path, procs: list[Proc], source: tuple[Path, str], streams: int
) -> None:
    src, digest = source
    out = tmp_path / "out"
    procs.append(tx := ListeningSender(str(src), "--streams", str(streams)))
    procs.append(rx := dialing_receiver(out, tx.port))
    wait_for_partial(out / ".data.bin.rtpart", SIZE // 3)
    rx.kill()
    tx.kill()
    procs.append(tx := ListeningSender(str(src), "--streams", str(streams)))
    procs.append(rx := dialing_receiver(out, tx.port))
    assert rx.finish() == 0 and tx.finish() == 0
    check_output(out, digest)
    done = tx.events("done")[0]
    assert (done["chunks"] + done["retransmits"]) * CHUNK <= SIZE * 2 // 3 + SIZE // 10  # resumed, not restarted


def test_a_listening_sender_killed_and_both_run_again_resume(
    tmp_path: Path, procs: list[Proc], source: tuple[Path, str]
) -> None:
    src, digest = source
    out, port = tmp_path / "out", free_port()
    procs.append(tx := ListeningSender(str(src), listen=f"127.0.0.1:{port}"))
    procs.append(rx := dialing_receiver(out, tx.port))
    wait_for_partial(out / ".data.bin.rtpart", SIZE // 3)
    tx.kill()
    rx.kill()
    procs.append(tx := ListeningSender(str(src), listen=f"127.0.0.1:{port}"))
    procs.append(rx := dialing_receiver(out, tx.port))
    assert tx.finish() == 0 and rx.finish() == 0
    check_output(out, digest)
    done = rx.events("done")[0]
    assert done["chunks"] * CHUNK <= SIZE * 2 // 3 + SIZE // 10
    assert blake3.blake3((out / "data.bin").read_bytes()).hexdigest() == digest
