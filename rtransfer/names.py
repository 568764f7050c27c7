"""Names as they travel and as they are shown.

A POSIX name is any bytes but "/" and NUL. In Python a name is a str whose bytes that are not
UTF-8 are lone surrogates (U+DC80-U+DCFF, ``os.fsdecode``'s surrogateescape), so a name read from
the disk or the command line crosses the wire as the same bytes and lands as them. In ``--json``
it stays that way: JSON escapes such a byte as ``\\udcNN``, which ``os.fsencode`` turns back into it.
"""

from __future__ import annotations

import errno
import os
from pathlib import PurePosixPath

from rtransfer.errors import LocalIOError
from rtransfer.protocol.entries import from_wire, to_wire

__all__ = ["from_wire", "to_wire"]


def _shown_table() -> dict[int, str]:
    """b3sum's escapes (a backslash doubled, a newline as \\n), its U+FFFD for a byte that is not
    UTF-8; and, beyond b3sum, every other control character as \\xNN, so a name cannot move the
    cursor or recolour a terminal."""
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
    table |= {c: f"\\u{c:04x}" for c in range(0x80, 0xA0)}  # C1 controls: some terminals act on them
    # Invisible, and the direction overrides: they make a name read as another ("Trojan Source").
    table |= {c: f"\\u{c:04x}" for c in (0x061C, *range(0x200B, 0x2010), *range(0x202A, 0x202F), 0xFEFF)}
    table |= {c: f"\\u{c:04x}" for c in range(0x2066, 0x206A)}
    table |= {c: "\ufffd" for c in range(0xDC80, 0xDD00)}
    table |= {ord("\\"): "\\\\", ord("\n"): "\\n"}
    return table


_SHOWN = _shown_table()


def checksum_line(digest: str, name: str) -> str:
    """A file's line as ``b3sum`` prints it, so ``b3sum -c`` checks it: a name with a backslash or
    a newline escaped, and the line marked by a leading backslash. Every other control character
    is escaped too, where b3sum leaves it raw: a peer's name must not drive a terminal, nor a log
    read later with ``cat`` or ``less -R`` (``b3sum -c`` then refuses that one line)."""
    mark = "\\" if "\\" in name or "\n" in name else ""
    return f"{mark}{digest}  {shown(name)}"


def shown(name: str) -> str:
    """A name as one line of a terminal shows it (see ``_shown_table``)."""
    return name.translate(_SHOWN)


_PRINTABLE = {c: v for c, v in _SHOWN.items() if c != ord("\\")}  # one line, and no backslash doubled


def printable(message: str) -> str:
    """A message for a terminal: the names in it already ``shown``, anything else that could move
    the cursor or is not text (a stray byte of a name) escaped as ``shown`` would."""
    return message.translate(_PRINTABLE)


def safe_relative_path(name: str, error: type[Exception] = LocalIOError) -> str:
    """A peer-supplied name, checked to be a relative path that cannot leave the destination.
    Raw, not normalised: "a//b" or "./a" could alias another entry. Substring tests, not a
    regular expression: this runs for every entry a receiver is sent, and a search cost 4 µs."""
    wrapped = f"/{name}/"  # an absolute name, or an empty, "." or ".." component, shows as one of three
    if "//" in wrapped or "/./" in wrapped or "/../" in wrapped or "\x00" in name:
        raise error(f"refusing unsafe name {shown(name)!r}")
    return name


def link_stays_inside(link_path: str, target: str | None) -> bool:
    """Does a link at ``link_path`` (relative to the transfer root) resolve inside the root, whatever
    the names it goes through turn out to be? A ".." is allowed only before the first name: after
    one, that name may itself be a link (``d/x -> ..``, then ``l -> d/x/../outside``), which each
    check alone lets through (rsync's CVE-2024-12088)."""
    if not target or target.startswith("/") or "\x00" in target:
        return False
    depth = len(PurePosixPath(link_path).parts) - 1
    named = False
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if named or depth < 0:
                return False
        elif part not in ("", "."):
            named = True
            depth += 1
    return True


# The receiver's own names beside the files it writes (dest.py): a partial file or a new
# subtree's hidden directory, its journal, the journal's next version, the subtree's marker.
PARTIAL_SUFFIX = ".rtpart"
JOURNAL_SUFFIX = ".rtjournal"
MARKER_SUFFIX = ".rtmark"
WORKING_SUFFIXES = (PARTIAL_SUFFIX, JOURNAL_SUFFIX, JOURNAL_SUFFIX + ".tmp", MARKER_SUFFIX, MARKER_SUFFIX + ".tmp")


def is_working_name(name: str) -> bool:
    """One name (no "/") the receiver keeps for its own working files: ".NAME.rtpart" and the like."""
    return name.startswith(".") and name.endswith(WORKING_SUFFIXES)


def refuse_working_names(path: str) -> None:
    """A peer's entry may not be, or be inside, one of the receiver's working names: it could plant
    there what the receiver would then take for its own (a partial file to resume, a subtree)."""
    if ".rt" in path and any(is_working_name(part) for part in path.split("/")):
        raise LocalIOError(f"refusing {shown(path)!r}: rtransfer keeps names like it for its own working files")


def local_error(exc: OSError, what: str | os.PathLike[str]) -> LocalIOError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    return LocalIOError(f"{shown(os.fspath(what))}: {reason}")
