"""Every chaos test: faults are handled, not leaked onto stderr."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Proc


@pytest.fixture(autouse=True)
def no_traceback_on_any_stderr(procs: list[Proc]) -> Iterator[None]:
    """No traceback and no unretrieved future on the stderr of any process a chaos test started
    (what a test read itself it has checked itself)."""
    yield
    for p in procs:
        p.kill()
        text = p.proc.stderr.read().decode("utf-8", "replace") if p.proc.stderr else ""
        assert "Traceback" not in text and "never retrieved" not in text, text[-1500:]
