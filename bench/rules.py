#!/usr/bin/env python3
"""How long do pathological include/exclude rules take to match a long path?

A sender's rules reach the receiver (``--delete`` matches every name in DEST against them), so
their cost is a peer's lever on the receiver's CPU. Each rule is matched against paths of
PATH_BYTES: the median of RUNS matches, after a warm-up, for the rule engine (filters.py, on RE2)
and for Python's backtracking ``re`` doing the same translation, which the engine replaced.

    python bench/rules.py            # the figures bench/README.md quotes
    python bench/rules.py --limit-ms 10   # and exit 1 if any rule takes longer than that
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable

from rtransfer.filters import make_rule

PATH_BYTES = 4096
RUNS = 21
RULES = ["**a**a**b", "*a*a*a*a*b", "**a**a**a**a**a**a**b", "a*a*a*a*a*a*a*a*b/", "**/x*y*z*w", "*.log"]
PATHS = {
    "a...a": "a" * PATH_BYTES,  # every "a" a place a star may end: the worst for a backtracking matcher
    "aaa/aaa/...": "/".join(["a" * 63] * (PATH_BYTES // 64)),
    "x/x/x/...": "x/" * (PATH_BYTES // 2 - 1) + "x",
}


def median_s(match: Callable[[], object]) -> float:
    match()  # warm-up
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        match()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def backtracking(pattern: str) -> re.Pattern[str]:
    """The translation the rules had before RE2 (rsync's syntax into Python's re): ``**`` as .*,
    ``*`` as [^/]*, unanchored at a name boundary."""
    body = re.escape(pattern.rstrip("/")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.compile("^(?:.*/)?" + body + "$", re.DOTALL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-ms", type=float, help="fail if any rule takes longer than this on any path")
    parser.add_argument("--backtracking", action="store_true", help="also time Python's re (slow: seconds)")
    args = parser.parse_args()
    worst = 0.0
    print(f"{'rule':26} {'path':14} {'RE2 (ms)':>9}" + (f" {'re (ms)':>10}" if args.backtracking else ""))
    for pattern in RULES:
        rule = make_rule(False, pattern)
        for name, path in PATHS.items():
            took = median_s(lambda rule=rule, path=path: rule.matches(path, True))  # type: ignore[misc]
            worst = max(worst, took)
            line = f"{pattern:26} {name:14} {took * 1000:9.3f}"
            if args.backtracking and pattern.count("*") <= 6:
                slow = backtracking(pattern)
                start = time.perf_counter()
                slow.match(path[:256])  # a 256-byte path: 4 KiB would take hours
                line += f" {(time.perf_counter() - start) * 1000:10.1f} (256 B)"
            print(line)
    print(f"worst median: {worst * 1000:.3f} ms per match of a {PATH_BYTES}-byte path")
    if args.limit_ms is not None and worst * 1000 > args.limit_ms:
        print(f"over the limit of {args.limit_ms} ms", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
