"""The two renderers of the one reporter interface."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import blake3
import pytest

from rtransfer.errors import IntegrityError
from rtransfer.names import checksum_line
from rtransfer.protocol.model import Entry
from rtransfer.report import ConsoleReporter, JsonReporter
from rtransfer.stats import TransferStats


def sample_stats() -> TransferStats:
    return TransferStats(
        "send",
        total_bytes=10 << 20,
        bytes_done=5 << 20,
        moved=5 << 20,
        files_total=2,
        retransmits=3,
        duplicates=2,
        in_flight=4,
    )


def test_live_display_shows_bytes_retransmits_and_in_flight() -> None:
    out = io.StringIO()
    reporter = ConsoleReporter(stream=out, live=True, width=200)
    stats = sample_stats()
    reporter.started(stats)
    reporter.progress(stats)
    reporter._progress.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "3 retx" in text and "4 in flight" in text and "5.0/10.0 MiB" in text and "0/2 files" in text
    reporter.done(stats)
    assert "3 retransmits" in out.getvalue().splitlines()[-1]


@pytest.mark.parametrize(
    ("path", "relay_bytes", "shown"),
    [("relay", 10, "receiving via relay"), ("direct", 10, "receiving direct"), ("direct", 0, "receiving ")],
)
def test_live_display_says_whether_the_bytes_go_through_the_relay(path: str, relay_bytes: int, shown: str) -> None:
    out = io.StringIO()
    reporter = ConsoleReporter(stream=out, live=True, width=200)
    stats = sample_stats()
    stats.role, stats.path, stats.relayed, stats.relay_bytes = "recv", path, path == "relay", relay_bytes
    reporter.started(stats)
    reporter.progress(stats)
    reporter._progress.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert shown in text and ("via relay" in text) == (path == "relay")
    reporter.done(stats)
    assert ("through the relay" in out.getvalue().splitlines()[-1]) == bool(relay_bytes)


def test_console_without_terminal_prints_no_progress_but_a_summary() -> None:
    out = io.StringIO()
    reporter = ConsoleReporter(stream=out)
    reporter.started(sample_stats())
    reporter.progress(sample_stats())
    assert out.getvalue() == ""
    reporter.done(sample_stats())
    assert out.getvalue().startswith("rtransfer: sent 5.0 MiB")


def test_quiet_console_prints_only_errors_and_how_to_connect() -> None:
    out = io.StringIO()
    reporter = ConsoleReporter(stream=out, quiet=True)
    reporter.file_done("a", 1, "00")
    reporter.done(sample_stats())
    reporter.error(IntegrityError("a: digest mismatch"))
    assert out.getvalue() == "rtransfer: error: a: digest mismatch\n"


def test_json_events_are_one_object_per_line() -> None:
    out = io.StringIO()
    reporter = JsonReporter(out)
    reporter.listening("127.0.0.1", 4242, "7hk2-m9xq-3wfe")
    reporter.retransmit(7, "timeout")
    reporter.error(IntegrityError("bad"))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events[0] == {
        "event": "listening",
        "role": "recv",
        "host": "127.0.0.1",
        "port": 4242,
        "code": "7hk2-m9xq-3wfe",
    }
    assert events[1] == {"event": "retransmit", "seq": 7, "reason": "timeout"}
    assert events[2] == {"event": "error", "code": 4, "kind": "integrity", "message": "bad"}
    assert events[3]["event"] == "done" and events[3]["ok"] is False and events[3]["code"] == 4
    assert events[3]["bytes"] == events[3]["retransmits"] == 0  # failed before any transfer started


def test_a_failed_transfer_still_reports_how_far_it_got() -> None:
    out = io.StringIO()
    reporter = JsonReporter(out)
    stats = sample_stats()
    reporter.started(stats)
    reporter.error(IntegrityError("bad"))
    done = json.loads(out.getvalue().splitlines()[-1])
    assert done["ok"] is False and done["code"] == 4
    assert {k: done[k] for k in ("bytes", "chunks", "retransmits", "integrity_failures", "duplicates")} == {
        "bytes": stats.bytes_done,
        "chunks": stats.chunks,
        "retransmits": stats.retransmits,
        "integrity_failures": stats.integrity_failures,
        "duplicates": 2,
    }


def test_summary_counts_agree_with_their_nouns() -> None:
    out = io.StringIO()
    stats = TransferStats("recv", bytes_done=1, files_done=1, chunks=1, retransmits=2, reconnects=1)
    ConsoleReporter(stream=out).done(stats)
    line = out.getvalue()
    assert "in 1 file in" in line and "1 chunk," in line and "2 retransmits" in line
    assert "1 reconnect," in line and "0 integrity failures" in line


def test_peak_memory_is_this_programs_own_not_its_parents() -> None:
    """ru_maxrss survives exec: a child of a large process would report the parent's size."""
    import subprocess
    import sys

    ballast = bytearray(200 << 20)  # this process is now > 200 MiB resident
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = "from rtransfer.stats import peak_rss_bytes; print(peak_rss_bytes())"
    child_peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
    assert child_peak < 100 << 20
    del ballast


def test_a_tree_prints_no_line_per_file_unless_verbose_and_a_single_file_prints_its_own() -> None:
    def lines(files_total: int, verbose: bool) -> list[str]:
        out = io.StringIO()
        reporter = ConsoleReporter(stream=out, verbose=verbose)
        reporter.started(TransferStats("recv", files_total=files_total))
        for i in range(files_total):
            reporter.file_done(f"f{i}", 1, "ab" * 32)
        return out.getvalue().splitlines()

    assert lines(3, verbose=False) == []
    assert len(lines(3, verbose=True)) == 3
    assert lines(1, verbose=False) == [f"{'ab' * 32}  f0"]  # b3sum's line, nothing after the name


def test_the_summary_counts_skipped_files_apart_and_says_failures_were_repaired() -> None:
    out = io.StringIO()
    stats = TransferStats("send", bytes_done=3 << 20, moved=1 << 20, files_done=3, integrity_failures=2)
    stats.files_skipped, stats.bytes_skipped = 2, 2 << 20
    ConsoleReporter(stream=out).done(stats)
    line = out.getvalue()
    assert "sent 1.0 MiB in 1 file (2 files of 2.0 MiB already there, skipped)" in line
    assert "2 integrity failures (all repaired and verified)" in line


def test_after_a_resume_and_a_reconnect_the_summary_counts_what_this_run_moved() -> None:
    """It said "sent 20.0 MiB in 2.50 s (8.0 MiB/s)" when 10.5 MiB moved, and called the files an
    earlier connection had delivered "already there, skipped"."""
    stats = TransferStats("recv")
    stats.start_listing()
    stats.listed([Entry("a", "file", 12 << 20), Entry("b", "file", 8 << 20)], True)
    stats.bytes_done += 9 << 20  # a's first 9 MiB, left by an interrupted run: resumed
    stats.transferred(3 << 20)  # a's rest
    stats.files_done += 1
    stats.reconnects += 1
    stats.start_listing()  # the second connection finds a whole: "skipped" by it, sent by this run
    stats.listed([Entry("a", "file", 12 << 20), Entry("b", "file", 8 << 20)], True)
    stats.skipped(1, 12 << 20)
    stats.transferred(8 << 20)
    stats.files_done += 1
    out = io.StringIO()
    ConsoleReporter(stream=out).done(stats)
    line = out.getvalue()
    assert "received 11.0 MiB in 2 files (9.0 MiB resumed) in" in line and "skipped" not in line, line


def test_the_time_runs_from_the_transfers_start_not_the_wait_for_the_peer() -> None:
    stats = TransferStats("recv")
    stats.started_at -= 100.0  # a receiver that listened for 100 s before anyone came
    stats.start_listing()
    assert stats.seconds < 50.0
    stats.start_listing()  # a reconnect keeps the clock
    assert stats.clock_started


@pytest.mark.parametrize(("role", "command"), [("recv", "rtransfer send FILE..."), ("send", "rtransfer recv DEST")])
def test_at_a_relay_the_code_comes_with_the_command_for_the_other_machine(role: str, command: str) -> None:
    out = io.StringIO()
    ConsoleReporter(stream=out, quiet=True).listening("relay.example", 4001, "7hk2-m9xq-3wfe", role=role, relay=True)
    text = out.getvalue()
    assert "at relay relay.example:4001" in text and "listening" not in text
    assert f"{command} --relay relay.example:4001 --code 7hk2-m9xq-3wfe" in text


def test_quiet_still_says_where_it_listens_and_the_code() -> None:
    out = io.StringIO()
    ConsoleReporter(stream=out, quiet=True).listening("0.0.0.0", 9060, "7hk2-m9xq-3wfe")
    assert "listening on 0.0.0.0:9060" in out.getvalue() and "--code 7hk2-m9xq-3wfe" in out.getvalue()


HARD_NAMES = ["plain.txt", "back\\slash", "new\nline", "t\u00e9l\u00e9", os.fsdecode(b"bad\xffbyte")]


@pytest.mark.skipif(shutil.which("b3sum") is None, reason="b3sum is installed by tests/run.sh")
def test_a_file_line_is_b3sums_byte_for_byte(tmp_path: Path) -> None:
    for i, name in enumerate(HARD_NAMES):
        (tmp_path / name).write_bytes(bytes([i]))
    out = io.StringIO()
    reporter = ConsoleReporter(stream=out, verbose=True, live=False)
    reporter.started(TransferStats("recv", files_total=len(HARD_NAMES), listing=True))
    for i, name in enumerate(HARD_NAMES):
        reporter.file_done(name, 1, blake3.blake3(bytes([i])).hexdigest())
    theirs = subprocess.run(["b3sum", "--", *HARD_NAMES], cwd=tmp_path, capture_output=True, check=True).stdout
    assert out.getvalue().encode("utf-8", "surrogateescape") == theirs


def test_a_file_line_escapes_what_would_drive_a_terminal_where_b3sum_leaves_it_raw() -> None:
    """Off a terminal too: a log of -v lines is read later with cat or less -R."""
    line = checksum_line("ab" * 32, "esc\x1b]0;title\x07\nx")
    assert line == "\\" + "ab" * 32 + "  esc\\x1b]0;title\\x07\\nx"
    assert checksum_line("ab" * 32, "cr\rx\u009b") == "ab" * 32 + "  cr\\x0dx\\u009b"
