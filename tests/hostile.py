"""A hostile sender: the real ``rtransfer send``, authenticated and speaking the real protocol, whose
file list is whatever a test wrote in the JSON file RTRANSFER_HOSTILE (paths with "..", the
receiver's working names, links to anywhere, devices, setuid bits, others' owners), each file's
bytes from that file too; with RTRANSFER_HOSTILE_LINGER set, it never closes after the receiver's
DONE. Run as ``python -m tests.hostile send ARGS...`` (the sources named
there are only placeholders).

An entry: {"path", "kind", and optionally "content" (text; files), "size" (declared, if not the
content's), "mode", "mtime_ns", "target", "uid", "gid", "device", "linked", "identity"}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from rtransfer.integrity import source_identity
from rtransfer.protocol.model import Entry
from rtransfer.sending.walk import PACK_FILE_MAX_BYTES, Source

SPEC_ENV = "RTRANSFER_HOSTILE"
LINGER_ENV = "RTRANSFER_HOSTILE_LINGER"  # set: after the receiver's DONE, keep the connection open


def entries_from(spec: list[dict[str, Any]], scratch: str) -> list[Source]:
    """The spec's entries, each file's content written to ``scratch`` for the reader to read."""
    sources = []
    for i, item in enumerate(spec):
        local = None
        size = None
        identity = item.get("identity")
        if item["kind"] == "file":
            local = os.path.join(scratch, f"content-{i}")
            with open(local, "wb") as f:
                f.write(item.get("content", "").encode("utf-8", "surrogateescape"))
            size = item.get("size", os.path.getsize(local))
            if identity is None and size > PACK_FILE_MAX_BYTES:
                st = os.stat(local)
                identity = source_identity(local, st.st_size, st.st_mtime_ns)
        linked = {"linked": True} if item.get("linked") else {}
        entry = Entry(
            item["path"],
            item["kind"],
            size,
            item.get("mode", 0o644),
            item.get("mtime_ns", 1_700_000_000 * 10**9),
            target=item.get("target"),
            identity=identity,
            uid=item.get("uid"),
            gid=item.get("gid"),
            device=item.get("device"),
            **linked,
        )
        sources.append(Source(entry, local))
    return sources


BATCH_ENTRIES = 1000  # the list goes in batches, as the real walk sends it (a receiver takes at most 1024)


def hostile_listing(sources: list[Source]) -> Callable[..., Iterator[Source | None]]:
    def listing(*args: object, **kwargs: object) -> Iterator[Source | None]:
        for at in range(0, len(sources), BATCH_ENTRIES):
            yield from sources[at : at + BATCH_ENTRIES]
            yield None

    return listing


def main() -> None:
    with open(os.environ[SPEC_ENV], encoding="utf-8") as f:
        spec = json.load(f)
    scratch = tempfile.mkdtemp(prefix="hostile-")
    from rtransfer.cli.early import main as cli_main  # the entry point, as the console script runs it
    from rtransfer.session import send

    send.listing = hostile_listing(entries_from(spec, scratch))  # type: ignore[assignment]
    if os.environ.get(LINGER_ENV):  # it hears the receiver's DONE and never closes: heartbeats only

        async def linger(self: object, event: object) -> None:
            await asyncio.Event().wait()

        send.SendAttempt.on_complete = linger  # type: ignore[assignment,method-assign]
    sys.argv = ["rtransfer", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
