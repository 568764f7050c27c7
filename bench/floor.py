#!/usr/bin/env python3
"""CPU seconds per GiB for each pass over the data, measured one at a time.

rtransfer must read the file, BLAKE3 it and send it on one side, and receive,
BLAKE3 and write it on the other (plus AES-GCM each way when encrypted); nc
reads, sends, receives and writes. Summing the passes gives the CPU floor of
each tool, which on a two-core machine bounds how close rtransfer can get.

    python bench/floor.py --size 1G
"""

from __future__ import annotations

import argparse
import mmap
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import xxhash
from compare import parse_size  # this directory is on sys.path when run as a script
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK = 4 << 20
STEP = 1 << 20


def cpu_s(work: Callable[[], None], rounds: int = 3) -> float:
    """Median CPU time of this thread: other tenants of a shared machine barely move it."""
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        work()
        times.append(time.thread_time() - start)
    return statistics.median(times)


def socket_copies(buf: memoryview, chunks: int) -> tuple[float, float]:
    """CPU of the sending and of the receiving thread for ``chunks`` over loopback TCP."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname()[:2])
        conn, _ = server.accept()
        received: list[float] = []

        def receive() -> None:
            start, view, got = time.thread_time(), memoryview(bytearray(CHUNK)), 0
            while got < chunks * CHUNK:
                got += conn.recv_into(view)
            received.append(time.thread_time() - start)

        reader = threading.Thread(target=receive)
        reader.start()
        start = time.thread_time()
        for _ in range(chunks):
            client.sendall(buf)
        sent = time.thread_time() - start
        reader.join()
        client.close()
        conn.close()
    return sent, received[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="bytes per pass (K/M/G suffix)")
    ap.add_argument("--dir", default=None, help="where the test file goes (default: a temporary directory)")
    args = ap.parse_args()
    chunks = max(1, parse_size(args.size) // CHUNK)
    per_gib = (1 << 30) / (chunks * CHUNK)
    region = mmap.mmap(-1, CHUNK)  # page-aligned, as rtransfer's pooled buffers are
    region.write(os.urandom(CHUNK))
    buf, sealed_out = memoryview(region), memoryview(bytearray(CHUNK + 16))
    aead, nonce = AESGCM(AESGCM.generate_key(256)), os.urandom(12)
    sealed = aead.encrypt(nonce, bytes(buf), b"")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        with open(src, "wb") as f:
            for _ in range(chunks):
                f.write(os.urandom(CHUNK))
        fd = os.open(src, os.O_RDONLY)
        view = buf

        def read() -> None:
            for i in range(chunks):
                os.preadv(fd, [buf], i * CHUNK)

        def read_and_hash() -> None:
            digest = blake3.blake3()
            for i in range(chunks):
                for k in range(0, CHUNK, STEP):
                    os.preadv(fd, [view[k : k + STEP]], i * CHUNK + k)
                    digest.update(view[k : k + STEP])

        def write(flags: int) -> Callable[[], None]:
            def run() -> None:
                out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags)
                for i in range(chunks):
                    os.pwrite(out, buf, i * CHUNK)
                os.close(out)
                dst.unlink()

            return run

        def each_chunk(step: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                for _ in range(chunks):
                    step()

            return run

        sent, received = socket_copies(buf, chunks)
        rows = {
            "read from the page cache": cpu_s(read),
            "read + BLAKE3, 1 MiB steps (rtransfer's sender)": cpu_s(read_and_hash),
            "BLAKE3 of a cached chunk (rtransfer's receiver)": cpu_s(each_chunk(lambda: blake3.blake3(buf))),
            "AES-256-GCM seal": cpu_s(each_chunk(lambda: aead.encrypt_into(nonce, buf, b"", sealed_out))),
            "AES-256-GCM open": cpu_s(each_chunk(lambda: aead.decrypt_into(nonce, sealed, b"", buf))),
            "xxh3-64 (--no-encrypt chunk check)": cpu_s(each_chunk(lambda: xxhash.xxh3_64_intdigest(buf))),
            "loopback TCP send": sent,
            "loopback TCP receive": received,
            "O_DIRECT write (rtransfer's receiver)": cpu_s(write(getattr(os, "O_DIRECT", 0))),
            "buffered write (nc's receiver)": cpu_s(write(0)),
        }
        os.close(fd)
    print("| pass | CPU s per GiB |\n|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds * per_gib:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
