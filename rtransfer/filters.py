"""Which entries a transfer takes: rsync's include and exclude rules, first match wins.

A rule's pattern is matched against an entry's path from the transfer root (``src/a/b``, or
``a/b`` for a source given as ``src/``), as rsync's exclude.c does:
- a pattern with no ``/`` and no ``**`` matches the last name only;
- a leading ``/`` anchors it at the root; otherwise it matches the end of the path, at a name
  boundary (``foo/bar`` matches ``x/foo/bar``), and one starting ``**/`` matches at the root too;
- a trailing ``/`` matches only a directory; a trailing ``/***`` matches a directory and all in it;
- ``*`` is any run of characters but ``/``, ``**`` any run at all, ``?`` one character but ``/``,
  ``[...]`` a class (``[!...]`` or ``[^...]`` its complement, ranges and ``[:alpha:]`` and the
  like, never ``/``), and ``\\`` makes the next one plain.

Matching is rsync's too: on bytes (a name need not be UTF-8, and ``?`` is one byte), and in time
bounded by path x pattern, whatever the wildcards: patterns run on RE2, whose automata never
backtrack. A sender's rules reach the receiver (``--delete`` keeps what they exclude), where
Python's backtracking ``re`` let ``**a**a**b`` take seconds on a long name.

An excluded directory is not walked, so nothing in it is sent; with ``--delete`` the receiver
keeps what the rules exclude (rsync without ``--delete-excluded``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgspec import Struct

from rtransfer.errors import UsageError
from rtransfer.protocol.entries import to_wire


@functools.cache
def _options() -> Any:
    """RE2 on bytes (Latin-1: each byte a character, as rsync's wildmatch), ``.`` taking newlines."""
    import re2

    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    options.dot_nl = True
    options.never_capture = True
    return options


_POSIX_CLASSES: dict[str, Callable[[bytes], bool]] = {
    "alnum": bytes.isalnum,
    "alpha": bytes.isalpha,
    "blank": lambda b: b in b" \t",
    "cntrl": lambda b: b[0] < 32 or b[0] == 127,
    "digit": bytes.isdigit,
    "graph": lambda b: 33 <= b[0] <= 126,
    "lower": bytes.islower,
    "print": lambda b: 32 <= b[0] <= 126,
    "punct": lambda b: 33 <= b[0] <= 126 and not b.isalnum(),
    "space": bytes.isspace,
    "upper": bytes.isupper,
    "xdigit": lambda b: b in b"0123456789abcdefABCDEF",
}


class _Malformed(Exception):
    """A class that never closes, or names no POSIX class: rsync then matches nothing."""


def _class(pattern: bytes, i: int) -> tuple[set[int], int]:
    """The bytes the class opened at ``pattern[i]`` (a ``[``) matches, and where it closes (the
    ``]``), read as rsync's wildmatch reads it; ``/`` is never in it."""
    i += 1
    negate = pattern[i : i + 1] in (b"!", b"^")
    i += negate
    members: set[int] = set()
    prev = -1  # the byte before, which a "-" ranges from (none after a range or a [:name:])
    first = True  # a "]" first in the class is a member
    while first or _at(pattern, i) != 0x5D:
        first = False
        c = _at(pattern, i)
        if c == 0x5C:  # a backslash: the next byte, plain
            i += 1
            prev = _at(pattern, i)
            members.add(prev)
        elif c == 0x2D and prev >= 0 and i + 1 < len(pattern) and pattern[i + 1] != 0x5D:  # a range
            i += 1 + (pattern[i + 1] == 0x5C)
            members.update(range(prev, _at(pattern, i) + 1))
            prev = -1
        elif pattern[i : i + 2] == b"[:" and _named_end(pattern, i) > 0:
            end = _named_end(pattern, i)
            test = _POSIX_CLASSES.get(pattern[i + 2 : end - 1].decode("latin-1"))
            if test is None:
                raise _Malformed
            members.update(b for b in range(256) if test(bytes((b,))))
            prev, i = -1, end
        else:
            members.add(c)
            prev = c
        i += 1
    chosen = set(range(256)) - members if negate else members
    chosen.discard(0x2F)
    return chosen, i


def _at(pattern: bytes, i: int) -> int:
    """The byte at ``i`` of a class, which must not end before its "]"."""
    if i >= len(pattern):
        raise _Malformed
    return pattern[i]


def _named_end(pattern: bytes, i: int) -> int:
    """Where a ``[:name:]`` opened at ``i`` closes (its "]"); -1 if it is a plain "[" (no ":]")."""
    end = pattern.find(b"]", i + 2)
    if end < 0:
        raise _Malformed
    return end if pattern[end - 1 : end] == b":" and end - 1 >= i + 2 else -1


def _byte_class(members: set[int]) -> str:
    if not members:
        return "[^\\x00-\\xff]"  # matches nothing
    return "[" + "".join(f"\\x{b:02x}" for b in sorted(members)) + "]"


def _translate(pattern: bytes) -> str:
    """A wildmatch pattern as an RE2 expression over bytes."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:  # "*"
            stars = len(pattern[i:]) - len(pattern[i:].lstrip(b"*"))
            out.append(".*" if stars > 1 else "[^/]*")
            i += stars
            continue
        if c == 0x3F:  # "?"
            out.append("[^/]")
        elif c == 0x5B:  # "["
            members, i = _class(pattern, i)
            out.append(_byte_class(members))
        elif c == 0x5C and i + 1 < n:  # "\\": the next byte, plain
            i += 1
            out.append(f"\\x{pattern[i]:02x}")
        else:
            out.append(f"\\x{c:02x}")
        i += 1
    return "".join(out)


class Rule(Struct, frozen=True):
    """One rule, with what rsync's add_rule notes of its pattern (exclude.c's rule flags)."""

    include: bool
    pattern: str  # as given, without its "+ " or "- "
    dir_only: bool  # a trailing "/"
    last_name_only: bool  # no "/" and no "**": only the last name is matched
    last_names: int  # unanchored, with slashes and no "**": the last this many names (0: not so)
    root_slash: bool  # starts "**": matched against the path with a "/" before it
    dir_slash: bool  # ends "***": a directory is matched with a "/" after it
    regex: Any = None  # an RE2 expression (None: the pattern matches nothing, as rsync's malformed ones)

    @property
    def spec(self) -> str:
        return f"{'+' if self.include else '-'} {self.pattern}"

    def matches(self, path: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        name = to_wire(path)
        if self.last_name_only:
            name = name[name.rfind(b"/") + 1 :]
        elif self.last_names:
            parts = name.rsplit(b"/", self.last_names)
            if len(parts) <= self.last_names - 1:
                return False
            name = name if len(parts) == self.last_names else name[len(parts[0]) + 1 :]
        if self.root_slash:
            name = b"/" + name
        if self.dir_slash and is_dir:
            name += b"/"
        return self.regex is not None and self.regex.fullmatch(name) is not None


def make_rule(include: bool, pattern: str) -> Rule:
    if not pattern:
        raise UsageError("an empty include or exclude pattern")
    body = to_wire(pattern)
    dir_only = len(body) > 1 and body.endswith(b"/")
    body = body[:-1] if dir_only else body
    slashes = body.count(b"/")
    wild = any(c in body for c in b"*[?")
    wild2 = wild and b"**" in body
    anchored = body.startswith(b"/")
    body = body[1:] if anchored else body
    if anchored:
        head = ""
    elif wild2 and not body.startswith(b"**"):
        head = "(?:.*/)?"  # rsync tries the pattern at the start and after every "/"
    else:
        head = ""
    try:
        import re2

        regex = re2.compile((head + _translate(body)).encode("ascii"), _options())
    except _Malformed:
        regex = None
    except re2.error as exc:
        raise UsageError(f"pattern {pattern!r}: {exc}") from None
    return Rule(
        include,
        pattern,
        dir_only,
        last_name_only=not slashes and not wild2,
        last_names=slashes + 1 if slashes and not anchored and not wild2 else 0,
        root_slash=wild2 and body.startswith(b"**") and not anchored,
        dir_slash=wild2 and body.endswith(b"***"),
        regex=regex,
    )


class Filters(Struct, frozen=True):
    """An ordered list of rules; an entry no rule matches is included."""

    rules: tuple[Rule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    def excluded(self, path: str, is_dir: bool) -> bool:
        for rule in self.rules:
            if rule.matches(path, is_dir):
                return not rule.include
        return False

    @property
    def specs(self) -> tuple[str, ...]:
        """The rules as "+ PATTERN" / "- PATTERN", which ``parse_specs`` reads back (the wire form)."""
        return tuple(rule.spec for rule in self.rules)


def parse_rule(text: str, include: bool, rules: list[Rule]) -> None:
    """One rule as rsync's --include/--exclude read it: a "+ " or "- " prefix overrides the
    option's kind, and "!" clears the rules so far."""
    if text == "!":
        rules.clear()
        return
    if text.startswith(("+ ", "- ")):
        include, text = text[0] == "+", text[2:]
    rules.append(make_rule(include, text))


def parse_specs(specs: tuple[str, ...] | list[str]) -> Filters:
    rules: list[Rule] = []
    for spec in specs:
        if not spec.startswith(("+ ", "- ")):
            raise ValueError(f"filter rule {spec!r} has no '+ ' or '- '")
        rules.append(make_rule(spec[0] == "+", spec[2:]))
    return Filters(tuple(rules))


def read_rule_file(path: str) -> list[str]:
    """--exclude-from FILE: a pattern a line; blank lines and those starting ';' or '#' are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise UsageError(f"--exclude-from {path}: {exc.strerror or exc}") from None
    return [line for line in text.splitlines() if line.strip() and not line.startswith((";", "#"))]


def filters_from(given: list[tuple[bool, str]]) -> Filters:
    """The command line's rules, in the order given: (include?, text) each."""
    rules: list[Rule] = []
    for include, text in given:
        parse_rule(text, include, rules)
    return Filters(tuple(rules))


NO_FILTERS = Filters()
