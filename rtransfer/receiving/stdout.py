"""Where a transfer lands when DEST is '-': standard output, in order, straight from the chunk buffers."""

from __future__ import annotations

import sys

from rtransfer.errors import LocalIOError, UsageError
from rtransfer.integrity import FileDigest
from rtransfer.names import local_error
from rtransfer.protocol.model import Buffer, EntryBatch, Manifest
from rtransfer.protocol.pack import PackedFile
from rtransfer.receiving.packs import check_packed
from rtransfer.receiving.plan import Plan
from rtransfer.stdio import StdStream

_ZEROS = bytes(1 << 20)


class StdoutSink:
    """Writes the single incoming stream to standard output, in order, straight from the chunk buffers.

    Bytes reach stdout before the whole-file digest can be checked (as with curl);
    a mismatch still fails the run with exit 4. A small file arrives packed, and is
    checked before its bytes are written.
    """

    dry = False
    conflicts = 0

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []  # nothing beyond the one stream is ever done here
        self._path = ""
        self._out: StdStream | None = None

    def check(self) -> None:
        pass

    def begin(self, manifest: Manifest) -> None:
        if manifest.delete or manifest.dry_run:
            raise UsageError("--delete and --dry-run need a directory DEST, not standard output")

    def plan(self, batch: EntryBatch) -> Plan:
        if batch.first != 0 or not batch.last or len(batch.entries) != 1 or batch.entries[0].kind != "file":
            raise LocalIOError("DEST '-' (standard output) takes exactly one incoming file")
        self._path = batch.entries[0].path
        return Plan({}, ())

    def display_path(self, index: int) -> str:
        return self._path

    async def examine(self, plan: Plan) -> Plan:
        return plan

    async def copy_from_basis(self, index: int, offset: int, ranges: list[tuple[int, int]], digest: FileDigest) -> int:
        raise LocalIOError("standard output has no old copy to take ranges from")

    async def hash_prefix(self, index: int, size: int, digest: FileDigest) -> None:
        raise LocalIOError("standard output cannot resume a transfer")

    async def write(self, index: int, offset: int, data: Buffer) -> None:
        try:
            if self._out is None:
                self._out = StdStream(sys.stdout.fileno())
            await self._out.write_all(data)
        except OSError as exc:
            raise local_error(exc, "standard output") from None

    async def skip(self, index: int, offset: int, n: int) -> None:
        for step in range(0, n, len(_ZEROS)):
            await self.write(index, offset + step, _ZEROS[: min(len(_ZEROS), n - step)])

    async def write_pack(
        self, files: list[PackedFile], payload: Buffer, check: bool = True
    ) -> list[tuple[str, int, str | None]]:
        (packed,) = files
        data, digest_hex = check_packed(memoryview(payload), packed, check)
        if digest_hex is not None:
            await self.write(packed.file_index, 0, data)
        return [(self._path, packed.size, digest_hex)]

    async def finish(self, index: int, ok: bool) -> None:
        pass

    async def complete(self) -> list[str]:
        return []

    async def suspend(self) -> None:
        pass
