"""The far side of ssh starts without typer (cli/far.py): the options it makes of a far command
must be the ones typer makes of the same words, and any other words go to typer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from rtransfer.cli import commands, far, transfer
from rtransfer.cli.options import RecvOptions, SendOptions
from rtransfer.cli.remote import far_session, receiver_flags, sender_flags

ENV = ("RTRANSFER_SECRET", "RTRANSFER_RSH", "RTRANSFER_STUN", "RTRANSFER_RELAY")


def typer_parsed(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> SendOptions | RecvOptions:
    made: list[SendOptions | RecvOptions] = []
    monkeypatch.setattr(transfer, "send", lambda options, reporter: made.append(options) or 0)
    monkeypatch.setattr(transfer, "recv", lambda options, reporter: made.append(options) or 0)
    typer.main.get_command(commands.app).main(argv, prog_name="rtransfer", standalone_mode=False)
    return made[0]


def far_argv(command: str, paths: list[str], flags: tuple[str, ...], timeout_s: float = 30.0) -> list[str]:
    """The far command as the near side makes it, without the program's name."""
    return list(far_session("ssh", "rtransfer", timeout_s, "host", command, paths, flags).command[1:])


FAR_COMMANDS = [
    far_argv("recv", ["."], ()),
    far_argv("recv", ["dir/"], receiver_flags(True, True, True, True, ("--owner", "--group", "--devices"))),
    far_argv("recv", ["a file"], receiver_flags(False, True, False, False, ("--group",)), timeout_s=7.5),
    far_argv("recv", ["-x"], ()),
    far_argv("send", ["a", "b/c", "-d"], ()),
    far_argv("send", ["."], sender_flags(True, True, True, 4, ("- *.o", "+ keep/", "- --"))),
    far_argv("send", ["x"], sender_flags(False, True, False, 1, ()), timeout_s=0.5),
]


@pytest.mark.parametrize("argv", FAR_COMMANDS)
@pytest.mark.parametrize(
    "env",
    [{}, dict.fromkeys(ENV, ""), {"RTRANSFER_SECRET": "s", "RTRANSFER_RSH": "ssh -p 2"},
     {"RTRANSFER_STUN": "127.0.0.1:3478", "RTRANSFER_RELAY": "127.0.0.1:4001"}],
)  # fmt: skip
def test_a_far_command_makes_the_options_typer_makes(
    argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    made = far.read(argv)
    assert made is not None
    assert made == typer_parsed(argv, monkeypatch)


def test_a_join_is_read_with_its_socket() -> None:
    join = far_session("ssh", "rtransfer", 30, "host", "recv", ["."], ()).join
    assert far.read([*join[1:], "/tmp/rtransfer-x/join"]) == "/tmp/rtransfer-x/join"


@pytest.mark.parametrize(
    "argv",
    [
        ["recv", "--stdio", "--json", "--timeout", "30", "."],  # no --
        ["recv", "--stdio", "--timeout", "30", "--", "."],  # no --json
        ["recv", "--json", "--stdio", "--timeout", "30", "--", "."],  # another order
        ["recv", "--stdio", "--json", "--timeout", "abc", "--", "."],
        ["recv", "--stdio", "--json", "--timeout", "30", "--buffered", "--", "."],  # not a far receiver's flag
        ["recv", "--stdio", "--json", "--timeout", "30", "--delete", "--delete", "--", "."],
        ["recv", "--stdio", "--json", "--timeout", "30", "--", "a", "b"],
        ["recv", "--stdio", "--json", "--timeout", "30", "--", "host:x"],  # typer says it looks remote
        ["send", "--stdio", "--json", "--timeout", "30", "--overwrite", "--", "f"],
        ["send", "--stdio", "--json", "--timeout", "30", "--streams", "many", "--", "f"],
        ["send", "--stdio", "--json", "--timeout", "30", "--streams"],
        ["join", "--stdio", "--json", "--timeout", "30", "--", "a", "b"],
        ["join", "--stdio", "--json", "--timeout", "30", "-q", "--", "a"],
        ["send", "--stdio", "--json", "--timeout", "30", "--name", "n", "--", "f"],
        ["--stdio", "--json", "--timeout", "30", "--", "f"],
    ],
)
def test_other_words_are_left_to_typer(argv: list[str]) -> None:
    assert far.read(argv) is None


@pytest.mark.parametrize("name, value", [("RTRANSFER_STUN", "nowhere"), ("_RTRANSFER_COMPLETE", "bash_complete")])
def test_what_typer_reads_from_the_environment_otherwise_is_left_to_it(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad STUN server: typer's error. A shell asking for completions: typer answers it."""
    monkeypatch.setenv(name, value)
    assert far.read(far_argv("recv", ["."], ())) is None


def test_the_far_side_runs_without_typer(tmp_path: Path) -> None:
    """typer and its click were ~30 ms of the far side's start, which the near side waits for."""
    probe = (
        "import sys\n"
        "from rtransfer.cli import early, transfer\n"
        "transfer.recv = lambda options, reporter: print('typer' in sys.modules, options.dest) or 0\n"
        f"sys.argv = ['rtransfer', *{far_argv('recv', [str(tmp_path)], ())!r}]\n"
        "early.main()\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, f"False {tmp_path}\n"), ran.stderr


def test_the_far_side_defines_no_dataclass_and_runs_on_asyncios_loop(tmp_path: Path) -> None:
    """A dataclass took ~0.5 ms to define, and 67 stood on the far side's way (~35 ms of its ~110
    ms of imports); msgspec makes its Structs in C. Over standard input and output uvloop was no
    faster, and its import is ~6 ms more (runner.loop_factory)."""
    probe = (
        "import sys\n"
        "from rtransfer.cli import early, transfer\n"
        "def recv(options, reporter):\n"
        "    from rtransfer.cli import configure, runner\n"
        "    from rtransfer.session import recv, send\n"
        "    loaded = sorted({'dataclasses', 'uvloop'} & set(sys.modules))\n"
        "    print(loaded, runner.loop_factory(options.stdio), file=sys.stderr)\n"
        "transfer.recv = recv\n"
        f"sys.argv = ['rtransfer', *{far_argv('recv', [str(tmp_path)], ())!r}]\n"
        "early.main()\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stderr) == (0, "[] None\n")
