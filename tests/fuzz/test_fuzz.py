"""Runs the atheris target for a bounded time as part of the suite (FUZZ_SECONDS, default 20)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TARGET = Path(__file__).with_name("fuzz_protocol.py")


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_coverage_guided_fuzzing_finds_nothing(tmp_path: Path) -> None:
    seconds = int(os.environ.get("FUZZ_SECONDS", "20"))
    result = subprocess.run(
        [sys.executable, str(TARGET), f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-timeout=10"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # crash artifacts land here, not in the repo
        timeout=seconds + 120,
        env={**os.environ, "PYTHONPATH": str(TARGET.parents[2])},
    )
    tail = "\n".join(result.stderr.splitlines()[-30:])
    assert result.returncode == 0, f"fuzzer found a problem:\n{tail}"
    assert "Done" in result.stderr, tail
