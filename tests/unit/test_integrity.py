"""The sender's read-and-hash step: the chunks and the digest must match the file whatever the sizes."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from rtransfer.integrity import READ_STEP_BYTES, FileDigest
from rtransfer.protocol.model import Entry
from rtransfer.protocol.pack import PackedFile
from rtransfer.receiving.dest import DestDirs
from rtransfer.receiving.packs import write_packed
from rtransfer.receiving.specials import DestPolicy

POLICY = DestPolicy()


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


@pytest.mark.parametrize("check", [True, False])
def test_a_packed_file_whose_digest_differs_gets_no_name_only_when_checked(tmp_path: Path, check: bool) -> None:
    """Unchecked (a pack opened under its AES-GCM tag), the sender's digest is taken as it is."""
    good, bad = b"good", b"bad!"
    files = [
        PackedFile(0, len(good), blake3.blake3(good).digest(), 0),
        PackedFile(1, len(bad), blake3.blake3(b"other").digest(), len(good)),
    ]
    entries = [Entry("good", "file", len(good), 0o644, 15 * 10**17), Entry("bad", "file", len(bad), 0o644, 15 * 10**17)]
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with DestDirs(root_fd) as dirs:
            done = list(
                write_packed(dirs, files, entries, [("", "good", True), ("", "bad", True)], good + bad, POLICY, check)
            )
    finally:
        os.close(root_fd)
    assert done[0] == ("good", 4, blake3.blake3(good).hexdigest())
    if check:
        assert done[1] == ("bad", 4, None)
        assert not (tmp_path / "bad").exists()
    else:
        assert done[1] == ("bad", 4, blake3.blake3(b"other").hexdigest())
        assert (tmp_path / "bad").read_bytes() == bad
