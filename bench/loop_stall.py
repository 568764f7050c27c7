#!/usr/bin/env python3
"""How long does BLAKE3 hashing stall the event loop, inline vs in a worker thread?

A 1 ms ticker runs beside a task that hashes SIZE bytes in CHUNK pieces the way
the pipeline does; we report the ticker's worst and 99th-percentile lateness.

    python bench/loop_stall.py --size 512M --chunk 1M
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from rtransfer.integrity import FileDigest

TICK_S = 0.001


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


async def measure(in_thread: bool, size: int, chunk: bytes) -> tuple[float, float, float]:
    lateness: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            lateness.append(time.perf_counter() - due)

    async def hasher() -> None:
        digest = FileDigest(in_thread=in_thread)
        for _ in range(size // len(chunk)):
            await digest.update(chunk)
            await asyncio.sleep(0)  # the pipeline yields between chunks too (queue put/get)

    tick = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    await hasher()
    elapsed = time.perf_counter() - started
    done = True
    await tick
    lateness.sort()
    return max(lateness) * 1000, lateness[int(len(lateness) * 0.99)] * 1000, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="512M")
    ap.add_argument("--chunk", default="1M")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size, chunk = parse_size(args.size), os.urandom(parse_size(args.chunk))
    print(f"hashing {args.size} in {args.chunk} chunks; event-loop lateness of a 1 ms ticker (median of {args.runs})")
    print("| BLAKE3 runs | worst lag ms | p99 lag ms | hash time s |")
    print("|---|---|---|---|")
    for in_thread in (False, True):
        results = [asyncio.run(measure(in_thread, size, chunk)) for _ in range(args.runs)]
        worst, p99, secs = (statistics.median(r[i] for r in results) for i in range(3))
        where = "in a worker thread" if in_thread else "on the event loop"
        print(f"| {where} | {worst:.2f} | {p99:.2f} | {secs:.2f} |")


if __name__ == "__main__":
    main()
