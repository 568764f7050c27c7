"""Which entries a transfer takes: rsync's include and exclude rules, first match wins.

A rule's pattern is matched against an entry's path from the transfer root (``src/a/b``, or
``a/b`` for a source given as ``src/``), as rsync's are:
- a leading ``/`` anchors it at the root; otherwise it matches the end of the path, at a name
  boundary (``foo/bar`` matches ``x/foo/bar``);
- a trailing ``/`` matches only a directory; a trailing ``/***`` matches a directory and all in it;
- ``*`` is any run of characters but ``/``, ``**`` any run at all, ``?`` one character but ``/``,
  ``[...]`` a class (``[!...]`` or ``[^...]`` its complement), and ``\\`` makes the next one plain.

An excluded directory is not walked, so nothing in it is sent; with ``--delete`` the receiver
keeps what the rules exclude (rsync without ``--delete-excluded``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rtransfer.errors import UsageError


@dataclass(frozen=True)
class Rule:
    include: bool
    pattern: str  # as given, without its "+ " or "- "
    dir_only: bool
    regex: re.Pattern[str]

    @property
    def spec(self) -> str:
        return f"{'+' if self.include else '-'} {self.pattern}"


def _translate(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                while i < n and pattern[i] == "*":
                    i += 1
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = _class_end(pattern, i)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                body = body.replace("\\", "\\\\").replace("[", "\\[")
                out.append(f"[{'^/' if negate else ''}{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """Where the class opened at ``start`` closes (a ``]`` first in the class is a member), or -1."""
    i = start + 1
    if i < len(pattern) and pattern[i] in "!^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    end = pattern.find("]", i)
    return end


def make_rule(include: bool, pattern: str) -> Rule:
    if not pattern:
        raise UsageError("an empty include or exclude pattern")
    body, tail = pattern, "$"
    anchored = body.startswith("/")
    body = body.lstrip("/") if anchored else body
    dir_only = False
    if body.endswith("/***"):
        body, tail = body[:-4], "(?:/.*)?$"
    elif body.endswith("/"):
        body, dir_only = body.rstrip("/"), True
    head = "^" if anchored else "^(?:.*/)?"
    try:
        regex = re.compile(head + _translate(body) + tail, re.DOTALL)
    except re.error as exc:
        raise UsageError(f"pattern {pattern!r}: {exc}") from None
    return Rule(include, pattern, dir_only, regex)


@dataclass(frozen=True)
class Filters:
    """An ordered list of rules; an entry no rule matches is included."""

    rules: tuple[Rule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    def excluded(self, path: str, is_dir: bool) -> bool:
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(path):
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
