"""The entry point: a push or a pull over ssh starts ssh before the rest of the program loads.

The command line (typer) and the option checks take ~80 ms to import before the parsed options
say where ssh goes; rsync has started ssh by then, and ssh's connection is the longest wait of a
small transfer. So the arguments are read here first, by a scanner that knows which options take
a value and the few that shape the far command. It guesses only when it knows every word and
every value given is one it checks itself (-e, --remote-path, --timeout): an option it doesn't
know, --help, combined short flags, or a value only the command checks (--window abc, a missing
--exclude-from file), and it leaves ssh to the command, which would otherwise refuse it after
ssh had started (and maybe asked for a password). The command then makes the far command from
the parsed options and keeps the session only if its words are the same
(transport/ssh_launch.start_early): a wrong guess costs a restarted ssh, never a wrong far side.
One not taken is stopped on the way out. The far side's command skips typer (far.py).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import math
import os
import sys
from collections.abc import Mapping

from rtransfer.cli.remote import far_session, receiver_flags, remote_path, sender_flags
from rtransfer.errors import UsageError
from rtransfer.transport.ssh_launch import SshCommand, start_early, stop_early

# Every option of send and recv (tests/unit/test_early.py holds these to typer's): which take a
# value, and the names each is known by, the first the one used here.
_SEND_VALUES = ("--name", "--timeout", "--chunk-size", "--window", "--streams", "--code", "--secret", "--retries",
                "--retry-max-seconds", "--limit-rate", "--listen -l", "--relay", "--stun", "--rsh -e", "--remote-path",
                "--exclude", "--include", "--exclude-from", "--include-from")  # fmt: skip
_SEND_FLAGS = ("--json", "--quiet -q", "--verbose -v", "--no-encrypt", "--safe-links", "--compress -z",
               "--checksum -c", "--whole-file -W", "--no-direct", "--stdio", "--overwrite", "--delete",
               "--delete-excluded", "--dry-run -n", "--owner -o", "--group -g", "--devices")  # fmt: skip
_RECV_VALUES = ("--listen -l", "--timeout", "--secret", "--max-bytes", "--max-files", "--max-streams", "--retries",
                "--retry-max-seconds", "--connect", "--code", "--relay", "--stun", "--rsh -e", "--remote-path",
                "--streams", "--exclude", "--include", "--exclude-from", "--include-from")  # fmt: skip
_RECV_FLAGS = ("--json", "--quiet -q", "--verbose -v", "--overwrite", "--no-encrypt", "--buffered", "--safe-links",
               "--no-direct", "--stdio", "--checksum -c", "--compress -z", "--whole-file -W", "--delete",
               "--delete-excluded", "--dry-run -n", "--owner -o", "--group -g", "--devices")  # fmt: skip
_CHECKED_HERE = {"--rsh", "--remote-path", "--timeout"}  # the only values a guess may follow


def _names(options: tuple[str, ...]) -> dict[str, str]:
    return {name: spelled.split()[0] for spelled in options for name in spelled.split()}


OPTIONS = {
    "send": (_names(_SEND_VALUES), _names(_SEND_FLAGS)),
    "recv": (_names(_RECV_VALUES), _names(_RECV_FLAGS)),
}


def read(argv: list[str]) -> tuple[str, dict[str, str], set[str], list[str]] | None:
    """``(command, values, flags, arguments)`` by each option's first name (a value: the last
    given), or None where a word isn't known."""
    if not argv or argv[0] not in OPTIONS:
        return None
    takes_value, flag_names = OPTIONS[argv[0]]
    values: dict[str, str] = {}
    flags: set[str] = set()
    arguments: list[str] = []
    words = iter(argv[1:])
    for word in words:
        if word == "--":
            arguments += words
        elif not word.startswith("-") or word == "-":
            arguments.append(word)
        else:
            name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
            if name in takes_value:
                given = value if eq else next(words, None)
                if given is None:
                    return None
                values[takes_value[name]] = given
            elif name in flag_names and not eq:
                flags.add(flag_names[name])
            else:
                return None
    return argv[0], values, flags, arguments


def guess(argv: list[str], environ: Mapping[str, str] = os.environ) -> SshCommand | None:
    """The far command ``argv`` will run over ssh, when it plainly runs one (a value that doesn't
    parse: None, and the command says why)."""
    with contextlib.suppress(ValueError, UsageError):
        return _guess(argv, environ)
    return None


def _guess(argv: list[str], environ: Mapping[str, str]) -> SshCommand | None:
    read_ = read(argv)
    if read_ is None:
        return None
    command, values, flags, arguments = read_
    if set(values) - _CHECKED_HERE or "--stdio" in flags or len(arguments) < 2:
        return None
    timeout_s = float(values.get("--timeout", "30"))
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        return None
    rsh = values.get("--rsh", environ.get("RTRANSFER_RSH") or "ssh")
    program = values.get("--remote-path", "rtransfer")
    *sources, last = arguments
    if command == "send":
        remote = remote_path(last)
        if remote is None:
            return None
        keep = tuple(flag for flag in ("--owner", "--group", "--devices") if flag in flags)
        on = [flag in flags for flag in ("--overwrite", "--delete", "--delete-excluded", "--dry-run")]
        wanted = receiver_flags(on[0], on[1], on[2], on[3], keep)
        return far_session(rsh, program, timeout_s, remote.host, "recv", [remote.path or "."], wanted)
    remotes = [r for r in map(remote_path, sources) if r is not None]
    if remote_path(last) is not None or len(remotes) < len(sources) or len({r.host for r in remotes}) != 1:
        return None
    on = [flag in flags for flag in ("--checksum", "--compress", "--whole-file")]
    wanted = sender_flags(on[0], on[1], on[2], 1, ())
    return far_session(rsh, program, timeout_s, remotes[0].host, "send", [r.path or "." for r in remotes], wanted)


def main() -> None:
    """``rtransfer``: ssh first, when the arguments plainly ask for it; then the command.

    The collector is off until the transfer runs (cli/runner.py freezes what start-up made, then
    turns it on): start-up makes ~100,000 objects that live as long as the process, and the
    collector went over them 25-57 times while the far side of ssh imported, for ~250 objects freed
    (~10 ms of the near side's wait for its first byte)."""
    gc.disable()
    with contextlib.suppress(Exception):  # only a head start: the command checks and says everything
        ssh = guess(sys.argv[1:])
        if ssh is not None:
            start_early(ssh)
            atexit.register(stop_early)
    if sys.argv[2:3] == ["--stdio"]:  # the far side of ssh, as far_session makes it: no typer
        from rtransfer.cli import far

        far.main(sys.argv[1:])
    from rtransfer.cli.commands import main as command

    command()
