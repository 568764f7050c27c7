"""The far side of ssh, started without typer. Its command line is the one remote.far_session
makes, word for word in that order, and is read here; anything else goes to typer (commands.py).
typer and the click it carries are ~30 ms of start-up, and the far side's start-up is the near
side's wait for its first byte. The options made here are the ones typer makes of the same words
(tests/unit/test_far.py holds them equal); where one can't be made plainly (a value that doesn't
parse, a bad RTRANSFER_STUN), typer reads the words and says why."""

from __future__ import annotations

import os
import sys

from rtransfer.cli import transfer
from rtransfer.cli.options import (
    STUN_ENV,
    Keep,
    RecvOptions,
    RetryOptions,
    SendOptions,
    ordered_rules,
    split_recv_arguments,
    stun_servers,
)
from rtransfer.errors import UsageError

_COMMON = ["--stdio", "--json", "--timeout"]
_RECV_FLAGS = ("--overwrite", "--delete", "--delete-excluded", "--dry-run", "--owner", "--group", "--devices")
_SEND_FLAGS = ("--checksum", "--compress", "--whole-file")
_EXCLUDE = "--exclude="
_COMPLETE_ENV = "_RTRANSFER_COMPLETE"
Far = SendOptions | RecvOptions | str  # join's: the socket to join


def read(argv: list[str]) -> Far | None:
    """What ``argv`` asks of the far side, when it is a far command as far_session makes it."""
    if len(argv) < 6 or argv[0] not in ("send", "recv", "join") or argv[1:4] != _COMMON or "--" not in argv[5:]:
        return None
    if _COMPLETE_ENV in os.environ:  # typer answers a shell's completion request instead
        return None
    end = argv.index("--", 5)
    flags, paths = argv[5:end], argv[end + 1 :]
    try:
        retry = RetryOptions(timeout_s=float(argv[4]))
        stun = stun_servers((), os.environ.get(STUN_ENV), True)
        if argv[0] == "send":
            return _send(flags, paths, retry, stun)
        if argv[0] == "recv":
            return _recv(flags, paths, retry, stun)
    except (ValueError, UsageError):
        return None
    return paths[0] if not flags and len(paths) == 1 else None


def _env(name: str) -> str | None:
    return os.environ.get(name) or None  # as typer reads an option's envvar: empty is unset


def _send(flags: list[str], paths: list[str], retry: RetryOptions, stun: tuple[tuple[str, int], ...]) -> SendOptions:
    on, streams, rules = [], 1, []
    words = iter(flags)
    for flag in words:
        if flag == "--streams":
            streams = int(next(words, ""))
        elif flag.startswith(_EXCLUDE):
            rules.append(flag.removeprefix(_EXCLUDE))
        else:
            on.append(flag)
    _check(on, _SEND_FLAGS)
    return SendOptions(
        paths,
        streams=streams,
        secret=_env("RTRANSFER_SECRET"),
        retry=retry,
        rsh=_env("RTRANSFER_RSH") or "ssh",
        stdio=True,
        checksum="--checksum" in on,
        compress="--compress" in on,
        whole_file="--whole-file" in on,
        stun=stun,
        filters=ordered_rules(flags, {"--exclude": rules, "--include": [], "--exclude-from": [], "--include-from": []}),
    )


def _recv(flags: list[str], paths: list[str], retry: RetryOptions, stun: tuple[tuple[str, int], ...]) -> RecvOptions:
    _check(flags, _RECV_FLAGS)
    if len(paths) != 1:
        raise ValueError("not one DEST")
    split_recv_arguments(paths)  # a DEST that looks remote: typer's message
    return RecvOptions(
        paths[0],
        secret=_env("RTRANSFER_SECRET"),
        retry=retry,
        rsh=_env("RTRANSFER_RSH") or "ssh",
        stdio=True,
        stun=stun,
        overwrite="--overwrite" in flags,
        delete="--delete" in flags,
        delete_excluded="--delete-excluded" in flags,
        dry_run="--dry-run" in flags,
        keep=Keep("--owner" in flags, "--group" in flags, "--devices" in flags),
    )


def _check(flags: list[str], known: tuple[str, ...]) -> None:
    if not set(flags) <= set(known) or len(set(flags)) != len(flags):
        raise ValueError(f"not the far side's flags: {flags}")


def main(argv: list[str]) -> None:
    """Run the far side and exit, when ``argv`` is a far command as far_session makes it."""
    far = read(argv)
    if far is None:
        return
    if isinstance(far, str):
        sys.exit(transfer.exit_code(lambda: transfer.join(far, json_output=True)))
    reporter = transfer.make_reporter(True, False, data_on_stdout=True)
    if isinstance(far, SendOptions):
        sys.exit(transfer.exit_code(lambda: transfer.send(far, reporter)))
    sys.exit(transfer.exit_code(lambda: transfer.recv(far, reporter)))
