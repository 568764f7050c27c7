"""Include/exclude rules and the trailing slash, checked against rsync's own choice on one tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rtransfer.cli.options import ordered_rules
from rtransfer.errors import UsageError
from rtransfer.filters import filters_from, parse_specs
from rtransfer.sending.walk import collect_sources, listing


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("filters") / "src"
    for path in (
        "a.py",
        "a.pyc",
        "b.txt",
        "notes/readme.md",
        "notes/draft.txt",
        "notes/old/x.txt",
        "build/out.o",
        "build/keep.txt",
        "src/build/gen.c",
        "src/main.c",
        "src/main.pyc",
        "src/lib/util.c",
        "src/lib/deep/er/leaf.c",
        "x1y",
        "xzy",
        "[b]racket",
        "star*file",
        "cache/tmp",
        "café",
        "caf\udce9",  # Latin-1 "café": not UTF-8
        "n]m",
        "d1/x.c",
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(path, errors="surrogateescape")
    (root / "empty").mkdir()
    (root / "txtdir.txt").mkdir()
    return root


RULE_SETS: list[list[tuple[bool, str]]] = [
    [(False, "*.pyc")],
    [(False, "build")],
    [(False, "/build")],
    [(False, "build/")],
    [(False, "src/build")],
    [(False, "lib/deep")],
    [(True, "*/"), (True, "*.c"), (False, "*")],
    [(True, "notes/***"), (False, "*")],
    [(False, "**/old")],
    [(False, "src/**/leaf.c")],
    [(False, "notes/*.txt")],
    [(False, "x?y")],
    [(False, "x[0-9]y")],
    [(False, "x[!0-9]y")],
    [(False, "\\[b]racket"), (False, "star\\*file")],
    [(False, "*.txt/")],
    [(True, "/src/main.c"), (False, "main.*")],
    [(False, "- b.txt"), (True, "+ *.md"), (False, "notes/*")],
    [(False, "cache"), (False, "!"), (False, "*.c")],
    [(False, "src/lib/")],
    [(False, "**/build")],  # rsync matches it at the top too
    [(False, "**/build/")],
    [(False, "/**/leaf.c")],
    [(False, "**/lib/***")],
    [(False, "src/***")],
    [(False, "*/*.c")],
    [(False, "src/*/")],
    [(False, "**")],
    [(False, "x[[:digit:]]y"), (False, "[]n]]m")],
    [(False, "x[^[:digit:]]y")],
    [(False, "caf?")],  # one byte: the Latin-1 name, not the UTF-8 one
    [(False, "caf??")],
    [(False, "*a*a*a*b"), (False, "**a**a**b")],
    [(False, "d[0-9]")],
    [(False, "[a-")],  # never closes: matches nothing
    [(False, "x[[:nope:]]y")],
]


def rsync_paths(src: str, rules: list[tuple[bool, str]], dest: Path) -> set[str]:
    """What ``rsync -a -n`` would create in an empty DEST, as paths from the transfer root."""
    args = [f"--{'include' if include else 'exclude'}={pattern}" for include, pattern in rules]
    out = subprocess.run(
        ["rsync", "-a", "-n", "-8", "--out-format=%n", *args, src, f"{dest}/"],
        capture_output=True,
        text=True,
        check=True,
        errors="surrogateescape",
    ).stdout
    return {line.rstrip("/") for line in out.splitlines() if line.strip() and line != "./"}


def our_paths(src: str, rules: list[tuple[bool, str]]) -> set[str]:
    sources = collect_sources([src], None)
    filters = filters_from(rules)
    listed = {s.entry.path for s in listing(sources, False, lambda _: None, filters=filters) if s is not None}
    return listed - {"."}


@pytest.mark.parametrize("rules", RULE_SETS, ids=lambda rules: " ".join(p for _, p in rules))
@pytest.mark.parametrize("slash", ["", "/"], ids=["src", "src/"])
def test_the_rules_select_what_rsync_selects(
    tree: Path, tmp_path: Path, rules: list[tuple[bool, str]], slash: str
) -> None:
    src = f"{tree}{slash}"
    assert our_paths(src, rules) == rsync_paths(src, rules, tmp_path)


def test_a_trailing_slash_sends_the_contents_and_no_slash_the_directory(tree: Path) -> None:
    whole = our_paths(str(tree), [])
    assert "src/a.py" in whole
    assert our_paths(f"{tree}/", []) == {p.removeprefix("src/") for p in whole - {"src"}}


def test_two_slash_sources_holding_one_name_are_refused(tmp_path: Path) -> None:
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "same").write_text(side)
    with pytest.raises(UsageError, match="'same'"):
        collect_sources([f"{tmp_path / 'a'}/", f"{tmp_path / 'b'}/"], None)


def test_the_rules_travel_as_specs_and_read_back_the_same() -> None:
    filters = filters_from([(True, "*/"), (False, "/a/**/b"), (False, "+ keep")])
    assert filters.specs == ("+ */", "- /a/**/b", "+ keep")
    again = parse_specs(filters.specs)
    for path, is_dir in (("x", True), ("a/q/b", False), ("keep", False), ("z", False)):
        assert again.excluded(path, is_dir) == filters.excluded(path, is_dir)


def test_the_order_typed_decides_across_options(tmp_path: Path) -> None:
    listed = tmp_path / "rules"
    listed.write_text("# comment\n\n; also\n*.o\n+ keep.o\n")
    args = ["send", "--include", "a", "--exclude=b", "--exclude-from", str(listed), "--include=c", "x", "h:1"]
    given = {"--include": ["a", "c"], "--exclude": ["b"], "--exclude-from": [str(listed)]}
    assert ordered_rules(args, given) == ("+ a", "- b", "- *.o", "+ keep.o", "+ c")


def test_a_missing_rule_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--exclude-from"):
        ordered_rules(["--exclude-from", str(tmp_path / "nope")], {"--exclude-from": [str(tmp_path / "nope")]})
