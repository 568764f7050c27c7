"""send --compress: what shrinks goes compressed, what does not costs a try in dozens, the level adapts."""

from __future__ import annotations

import os

import pytest
import zstandard

from rtransfer.compress import MAX_LEVEL, MAX_SKIPPED_CHUNKS, OFF, BadCompressedChunk, Compressor, decompress
from rtransfer.protocol.messages import ZDATA_SIZE

TEXT = b"".join(b"2026-11-30T12:00:%02d INFO GET /api/v1/users 200 %dms\n" % (i % 60, i % 997) for i in range(20000))


def test_text_goes_compressed_and_comes_back_whole() -> None:
    compressor = Compressor()
    payload = compressor.compress(TEXT)
    assert payload is not None and len(payload) < len(TEXT) // 4
    assert decompress(payload) == TEXT
    assert compressor.ratio > 4


def test_random_data_goes_raw_and_is_tried_less_and_less() -> None:
    """After each chunk that does not shrink, twice as many are sent without a try (up to 64)."""
    compressor = Compressor()
    chunk = os.urandom(64 * 1024)
    for _ in range(400):
        assert compressor.compress(chunk) is None
    assert compressor.ratio == 1.0
    assert compressor.tried <= 7 + 400 // MAX_SKIPPED_CHUNKS


def test_compressible_data_after_random_is_compressed_again_soon() -> None:
    compressor = Compressor()
    for _ in range(3):
        compressor.compress(os.urandom(64 * 1024))
    results = [compressor.compress(TEXT) for _ in range(8)]
    assert results[-1] is not None


def test_the_level_climbs_while_the_link_waits_and_falls_while_the_cpu_does() -> None:
    """Down to no compression at all while even the fastest level holds the link back; up again
    once the link is the bottleneck."""
    compressor = Compressor()
    for _ in range(50):
        compressor.adapt(link_waits=True, cpu_waits=False)
    assert compressor.level == MAX_LEVEL
    for _ in range(50):
        compressor.adapt(link_waits=False, cpu_waits=True)
    assert compressor.level == OFF
    compressor.adapt(link_waits=False, cpu_waits=False)
    assert compressor.level == OFF
    assert compressor.compress(TEXT) is None and compressor.tried == 0
    compressor.adapt(link_waits=True, cpu_waits=False)
    assert compressor.compress(TEXT) is not None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (ZDATA_SIZE.pack(10) + zstandard.ZstdCompressor().compress(b"x" * 11), "inflates past"),
        (ZDATA_SIZE.pack(10) + zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 11), "decompress"),
        (ZDATA_SIZE.pack(10) + zstandard.ZstdCompressor().compress(b"x" * 9), "holds 9 bytes"),
        (ZDATA_SIZE.pack(10) + b"not zstd at all", "does not decompress"),
    ],
)
def test_a_compressed_chunk_that_lies_about_its_size_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(BadCompressedChunk, match=message):
        decompress(payload)
