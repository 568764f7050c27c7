"""Delta transfer's file side: the chunker's properties, describing an old copy, matching a new one."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from rtransfer.delta import (
    CDC_MAX_BYTES,
    CDC_MIN_BYTES,
    Fingerprint,
    Matcher,
    chunk_digest,
    cut,
    describe,
    fingerprint,
    match,
)
from rtransfer.protocol.model import Basis

SIZE = 2 * 1024 * 1024


def random_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 4 * CDC_MAX_BYTES), st.sampled_from([0, 1, 7, 4096]))
def test_every_chunk_is_within_its_bounds_and_they_tile_the_data(seed: int, size: int, zeros_at: int) -> None:
    data = bytearray(random_bytes(seed, size))
    data[: min(zeros_at * 64, size)] = bytes(min(zeros_at * 64, size))  # a run with no content to cut at
    chunks = cut(bytes(data))
    assert [o for o, _ in chunks] == [sum(n for _, n in chunks[:i]) for i in range(len(chunks))]
    assert sum(n for _, n in chunks) == size
    for _, length in chunks[:-1]:
        assert CDC_MIN_BYTES <= length <= CDC_MAX_BYTES
    if chunks:
        assert 0 < chunks[-1][1] <= CDC_MAX_BYTES


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.05, 0.95), st.integers(1, 8192))
def test_an_insertion_moves_only_the_boundaries_near_it(seed: int, where: float, inserted: int) -> None:
    """Boundaries before the insertion stay where they were; after it, the old boundaries come back
    shifted by the insertion's length, so only the chunks around it are new."""
    data = random_bytes(seed, SIZE)
    at = int(where * SIZE)
    new = data[:at] + random_bytes(seed + 1, inserted) + data[at:]
    old_ends = {o + n for o, n in cut(data)}
    new_ends = {o + n for o, n in cut(new)}
    assert {e for e in old_ends if e <= at} == {e for e in new_ends if e <= at}
    shifted = {e + inserted for e in old_ends if e > at}
    after = sorted(e for e in new_ends if e > at)
    resync = next(i for i, e in enumerate(after) if e in shifted)  # the first boundary both share
    assert set(after[resync:]) == {e for e in shifted if e >= after[resync]}
    assert after[resync] - at <= inserted + 4 * CDC_MAX_BYTES  # the chunks that differ cover little


def described(path: Path) -> Basis:
    with open(path, "rb") as f:
        return describe(f.fileno())


def _fingerprint(path: Path, start: int = 0) -> Fingerprint:
    with path.open("rb") as f:
        return fingerprint(f.fileno(), str(path), start)


def test_a_matched_file_names_the_old_copy_for_all_but_the_change(tmp_path: Path) -> None:
    old = random_bytes(1, SIZE)
    new = old[: SIZE // 3] + b"inserted" + old[SIZE // 3 : SIZE // 2] + random_bytes(2, 5000) + old[SIZE // 2 + 5000 :]
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    basis = described(tmp_path / "old")
    assert sum(n for n, _ in basis) == SIZE
    matcher = Matcher()
    matcher.add(basis[:3])  # a description arrives in parts
    matcher.add(basis[3:])
    new_print = _fingerprint(tmp_path / "new")
    assert new_print.size == len(new) and new_print.digest == blake3.blake3(new).digest()
    pieces = match(new_print, matcher)
    rebuilt = b"".join(
        old[p.basis_offset : p.basis_offset + p.length]
        if p.basis_offset is not None
        else new[p.offset : p.offset + p.length]
        for p in pieces
    )
    assert rebuilt == new
    sent = sum(p.length for p in pieces if p.basis_offset is None)
    assert 5008 <= sent <= 5008 + 4 * CDC_MAX_BYTES
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(pieces))


def test_a_resumed_delta_cuts_from_its_offset_and_still_digests_the_whole_file(tmp_path: Path) -> None:
    data = random_bytes(3, SIZE)
    (tmp_path / "f").write_bytes(data)
    matcher = Matcher()
    matcher.add(described(tmp_path / "f"))
    new_print = _fingerprint(tmp_path / "f", SIZE // 2)
    assert new_print.size == SIZE and new_print.digest == blake3.blake3(data).digest()
    pieces = match(new_print, matcher)
    assert pieces[0].offset == SIZE // 2
    assert sum(p.length for p in pieces) == SIZE // 2


def test_a_chunk_matches_only_with_its_length_too() -> None:
    matcher = Matcher()
    matcher.add(((10, chunk_digest(memoryview(b"x" * 10))), (5, chunk_digest(memoryview(b"y" * 5)))))
    assert matcher.basis_bytes == 15
    assert matcher.find(5, chunk_digest(memoryview(b"y" * 5))) == 10
    assert matcher.find(6, chunk_digest(memoryview(b"y" * 5))) is None
