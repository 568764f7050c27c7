"""Over ssh: which arguments are remote (rsync's rule), and the command that runs the far side,
made from the options alone. Light on purpose (no options module, no msgspec): the entry
point makes a push's or pull's far command from here before the rest of the program is
imported (cli/early.py), and options.py makes it again from the parsed options."""

from __future__ import annotations

import shlex
from typing import NamedTuple

from rtransfer.errors import UsageError
from rtransfer.transport.ssh_launch import SshCommand

STDIO = "-"
STDIO_OVER_SSH = "over ssh the far side's standard input and output carry the transfer (a file named '-': ./-)"


class RemotePath(NamedTuple):
    """``[USER@]HOST:PATH``, reached over ssh: ``host`` as ssh takes it, ``path`` "" for the home."""

    host: str
    path: str


def remote_path(text: str) -> RemotePath | None:
    """rsync's rule: an argument is remote when a colon comes before any slash (``./a:b`` is a
    local file). ``HOST:PORT`` with an all-digit PORT stays the direct TCP form (None here);
    ``host:./9000`` names a digit-only path. IPv6 in brackets: ``[addr]:PATH``, ``user@[addr]:PATH``."""
    user, at, rest = text.rpartition("@") if "@[" in text else ("", "", text)
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0 or rest[close + 1 : close + 2] != ":":
            return None
        host, path = rest[1:close], rest[close + 2 :]
    else:
        colon, slash = text.find(":"), text.find("/")
        if colon <= 0 or -1 < slash < colon:
            return None
        user, at, host, path = "", "", text[:colon], text[colon + 1 :]
    if not host or (path.isascii() and path.isdigit()):  # a port is ASCII digits: host:² is a path
        return None
    return RemotePath(f"{user}{at}{host}", path)


def check_ssh_host(host: str) -> str:
    """ssh takes a word starting with "-" as an option (``-oProxyCommand=...`` runs a command):
    a user or host that starts so is refused, whatever the ssh."""
    name = host.rpartition("@")[2]
    if host.startswith("-") or name.startswith("-"):
        raise UsageError(f"refusing ssh host {host!r}: a user or host may not start with '-'")
    return host


def flags_on(given: dict[str, bool]) -> tuple[str, ...]:
    """The flags given, for the far side of ssh (a pull's sender, a push's receiver)."""
    return tuple(flag for flag, on in given.items() if on)


def sender_flags(
    checksum: bool, compress: bool, whole_file: bool, streams: int, rules: tuple[str, ...]
) -> tuple[str, ...]:
    """A pull's options, for the far sender: its rules each as an --exclude whose "+ " or "- " says which."""
    given = {"--checksum": checksum, "--compress": compress, "--whole-file": whole_file}
    flags = flags_on(given) + (("--streams", str(streams)) if streams != 1 else ())
    return flags + tuple(f"--exclude={rule}" for rule in rules)


def receiver_flags(
    overwrite: bool, delete: bool, delete_excluded: bool, dry_run: bool, keep: tuple[str, ...]
) -> tuple[str, ...]:
    """A push's options, for the far receiver; ``keep``: -o, -g and --devices as flags."""
    given = {"--overwrite": overwrite, "--delete": delete, "--delete-excluded": delete_excluded, "--dry-run": dry_run}
    return flags_on(given) + keep


def far_session(
    rsh_text: str, program: str, timeout_s: float, host: str, command: str, paths: list[str], flags: tuple[str, ...]
) -> SshCommand:
    """What runs the far side: ``-e``'s words, HOST, and the remote ``program``'s ``command``
    with ``flags`` and ``paths``."""
    try:
        rsh = tuple(shlex.split(rsh_text))
    except ValueError as exc:  # an unbalanced quote
        raise UsageError(f"-e/--rsh {rsh_text!r}: {exc}") from None
    if not rsh:
        raise UsageError("-e/--rsh is empty: give the ssh command, as rsync's -e")
    check_ssh_host(host)
    if STDIO in paths:
        raise UsageError(f"{host}:{STDIO}: {STDIO_OVER_SSH}")
    common = ("--stdio", "--json", "--timeout", f"{timeout_s:g}")
    far = (program, command, *common, *flags, "--", *paths)
    return SshCommand(rsh, host, far, (program, "join", *common, "--"))
