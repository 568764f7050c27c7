"""The sender's read-and-hash step: the chunks and the digest must match the file whatever the sizes."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from rtransfer.integrity import READ_STEP_BYTES, FileDigest


@pytest.mark.parametrize("size", [0, 1, READ_STEP_BYTES, 3 * READ_STEP_BYTES + 7])
@pytest.mark.parametrize("chunk", [4096, 2 * READ_STEP_BYTES + 4096])
async def test_read_into_returns_each_chunk_and_hashes_the_whole_file(tmp_path: Path, size: int, chunk: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    digest = FileDigest()
    pieces = []
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        offset = 0
        while piece := await digest.read_into(fd, bytearray(chunk), offset):
            pieces.append(bytes(piece))
            offset += len(piece)
    finally:
        os.close(fd)
    assert b"".join(pieces) == data
    assert all(len(p) == chunk for p in pieces[:-1])
    assert digest.hexdigest() == blake3.blake3(data).hexdigest()
