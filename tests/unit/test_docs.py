"""The man pages and README keep step with the CLI."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rtransfer.cli.commands import app
from rtransfer.errors import RtransferError

ROOT = Path(__file__).resolve().parents[2]


def help_options(*command: str) -> set[str]:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", result.output)) - {"-"}


def man_options(page: str) -> set[str]:
    text = (ROOT / "man" / page).read_text()
    section = text.split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]
    tagged = re.findall(r"^\.(?:B|BI|BR) (.+)$", section, flags=re.M)
    found: set[str] = set()
    for line in tagged:
        found.update(o.replace("\\-", "-") for o in re.findall(r"((?:\\-){1,2}[a-z][a-z\\-]*)", line))
    return found


@pytest.mark.parametrize(("command", "page"), [(("send",), "rtransfer-send.1"), (("recv",), "rtransfer-recv.1")])
def test_man_page_documents_exactly_the_options_of_help(command: tuple[str, ...], page: str) -> None:
    documented = {o for o in man_options(page) if o.startswith("--") or len(o) == 2}
    assert documented == help_options(*command)


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize("page", ["rtransfer.1", "rtransfer-send.1", "rtransfer-recv.1"])
def test_man_page_renders_without_warnings(page: str) -> None:
    result = subprocess.run(
        ["man", "--warnings", "-l", str(ROOT / "man" / page)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0
    assert result.stderr == ""
    assert "EXAMPLES" in result.stdout and "EXIT STATUS" in result.stdout


def test_every_exit_code_is_documented_in_readme_and_man() -> None:
    from rtransfer import errors

    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    readme = (ROOT / "README.md").read_text()
    man = (ROOT / "man" / "rtransfer.1").read_text()
    for code in codes:
        assert re.search(rf"\|\s*{code}\s*\|", readme), f"exit code {code} missing from README"
        assert f".B {code}\n" in man, f"exit code {code} missing from rtransfer.1"


def test_the_readme_is_a_users_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert not re.search(r"^#+ .*benchmark", readme, re.IGNORECASE | re.MULTILINE)


def test_every_module_the_architecture_names_exists() -> None:
    """docs/architecture.md names where each decision lives; a renamed module must not leave it pointing nowhere."""
    readme = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([\w/]+\.py)`", readme))
    assert len(named) > 20
    for name in named:
        path = ROOT / (name if name.split("/")[0] in ("rtransfer", "bench", "tests") else f"rtransfer/{name}")
        assert path.exists(), f"docs/architecture.md names {name}, which does not exist"


def test_every_json_field_is_documented() -> None:
    from rtransfer.report import JsonReporter
    from rtransfer.stats import TransferStats

    out = io.StringIO()
    reporter = JsonReporter(out)
    stats = TransferStats("send", compression=2.0, streams=[{"stream": 0}], dry_run=True, devices_skipped=1)
    reporter.listening("h", 1, "c")
    reporter.listening("h", 1, "c", relay=True)
    reporter.started(stats)
    reporter.progress(stats)
    reporter.retransmit(1, "nack")
    reporter.file_done("p", 1, "ab")
    reporter.warning("w")
    reporter.joinable("/run/s")
    reporter.error(RtransferError("x"))
    man = (ROOT / "man" / "rtransfer.1").read_text()
    fields = {key for line in out.getvalue().splitlines() for key in json.loads(line)}
    events = {json.loads(line)["event"] for line in out.getvalue().splitlines()}
    for name in fields | events | {"rate_bps", "in_flight_bytes", "queued_bytes", "stalled", "paused", "path"}:
        assert re.search(rf"\b{name}\b", man), f"{name} is not in rtransfer.1's JSON EVENTS"


def test_the_version_is_the_changelogs_latest_and_every_man_pages() -> None:
    """``--version`` and the man pages said 1.0.0 while both described 1.1."""
    from rtransfer import __version__

    latest = re.search(r"^## (\d+\.\d+\.\d+) \(", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert latest is not None and latest.group(1) == __version__ == "1.1.0"
    for page in ("rtransfer.1", "rtransfer-send.1", "rtransfer-recv.1"):
        header = (ROOT / "man" / page).read_text().splitlines()[0]
        assert f'"rtransfer {__version__}"' in header, page
