"""The file list on the wire: a batch of entries, packed in binary (then zstd-compressed by the codec).

A tree of small files puts little else on the wire, and both sides handle every entry, so its
cost per entry counts twice; JSON spent about 13 µs an entry on the receiver, checks included.
Each path is sent as its directory's bytes shared with the path before (a count) and the rest,
much as rsync's file list does: siblings share their directory.

Per entry: kind, flags, shared prefix and suffix lengths and mode (``_HEAD``), the suffix, then
each field ``flags`` names, in this order: size (u64), mtime (i64 nanoseconds), target (u16 length + UTF-8),
identity (u16 length + UTF-8), digest (CONTENT_DIGEST_BYTES), uid and gid (u32 each), device (u64).
``LINKED`` carries no field: the file has more names, which follow as hard links to it.

Paths and link targets are bytes, as the file system has them (names.py), not necessarily UTF-8.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from rtransfer.protocol.errors import RemoteProtocolError
from rtransfer.protocol.model import CONTENT_DIGEST_BYTES, MAX_BATCH_ENTRIES, Buffer, Entry, EntryBatch

KIND_CODES = ("file", "dir", "symlink", "hardlink", "fifo", "char", "block")
_CODE_OF = {kind: code for code, kind in enumerate(KIND_CODES)}
_LINK_KINDS = frozenset((_CODE_OF["symlink"], _CODE_OF["hardlink"]))
_DEVICES = frozenset((_CODE_OF["char"], _CODE_OF["block"]))

_BATCH = struct.Struct("!QBH")  # first, last, count
_HEAD = struct.Struct("!BBHHH")  # kind, flags, shared prefix bytes, suffix bytes, mode
_U16, _U64 = struct.Struct("!H"), struct.Struct("!Q")
SIZE, MTIME, OWNER, TARGET, IDENTITY, DIGEST, DEVICE, LINKED = (1 << i for i in range(8))
COMMON = SIZE | MTIME | OWNER
# For each combination of the common fields: the struct that holds just those.
_COMMON_LAYOUTS = [
    struct.Struct("!" + ("Q" if f & SIZE else "") + ("q" if f & MTIME else "") + ("II" if f & OWNER else ""))
    for f in range(COMMON + 1)
]
MAX_TARGET_BYTES = 4096  # PATH_MAX: what a link's text may hold
MAX_IDENTITY_BYTES = 512
# A path at most PATH_MAX bytes, as rsync's: a path shares its directory with the one before it on
# the wire, and the receiver keeps some whole until the end (directories, links), so without a
# bound a few bytes on the wire could stand for megabytes held there.
MAX_PATH_BYTES = 4096


def to_wire(name: str) -> bytes:
    """A name's bytes: a byte that is not UTF-8 is a lone surrogate in the str (rtransfer/names.py)."""
    return name.encode("utf-8", "surrogateescape")


def from_wire(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_entries(batch: EntryBatch) -> bytes:
    out = [_BATCH.pack(batch.first, batch.last, len(batch.entries))]
    put = out.append
    previous = b""
    for e in batch.entries:
        path = to_wire(e.path)
        shared = _shared(previous, path)
        previous = path
        flags = (
            (SIZE if e.size is not None else 0)
            | (MTIME if e.mtime_ns is not None else 0)
            | (TARGET if e.target is not None else 0)
            | (IDENTITY if e.identity is not None else 0)
            | (DIGEST if e.digest is not None else 0)
            | (OWNER if e.uid is not None and e.gid is not None else 0)
            | (DEVICE if e.device is not None else 0)
            | (LINKED if e.linked else 0)
        )
        put(_HEAD.pack(_CODE_OF[e.kind], flags, shared, len(path) - shared, e.mode))
        put(path[shared:])
        common = (e.size, e.mtime_ns, e.uid, e.gid) if flags & COMMON == COMMON else _common(e, flags)
        put(_COMMON_LAYOUTS[flags & COMMON].pack(*common))
        if flags & ~COMMON & ~LINKED:
            put(_rare_fields(e))
    return b"".join(out)


def _shared(a: bytes, b: bytes) -> int:
    """The bytes of ``b``'s directory that ``a`` starts with too (two C-level calls, not a loop)."""
    d = b.rfind(b"/") + 1
    return d if d <= 0xFFFF and a[:d] == b[:d] else 0


def _common(e: Entry, flags: int) -> tuple[object, ...]:
    fields: tuple[object, ...] = (e.size,) if flags & SIZE else ()
    fields += (e.mtime_ns,) if flags & MTIME else ()
    return fields + ((e.uid, e.gid) if flags & OWNER else ())


def _rare_fields(e: Entry) -> bytes:
    out = []
    if e.target is not None:
        target = to_wire(e.target)
        out += [_U16.pack(len(target)), target]
    if e.identity is not None:
        identity = e.identity.encode("utf-8")
        out += [_U16.pack(len(identity)), identity]
    if e.digest is not None:
        out.append(bytes.fromhex(e.digest))
    if e.device is not None:
        out.append(_U64.pack(e.device))
    return b"".join(out)


def decode_entries(body: Buffer) -> EntryBatch:
    """Every field checked; a malformed batch is a RemoteProtocolError saying which part."""
    data = bytes(body)
    try:
        first, last, count = _BATCH.unpack_from(data)
        if count > MAX_BATCH_ENTRIES or last > 1:
            raise RemoteProtocolError("ENTRIES count or last malformed")
        pos = _BATCH.size
        previous = b""
        entries = []
        for _ in range(count):
            entry, pos, previous = _decode_entry(data, pos, previous)
            entries.append(entry)
    except struct.error:
        raise RemoteProtocolError("ENTRIES frame truncated") from None
    if pos != len(data):
        raise RemoteProtocolError("ENTRIES frame has bytes after its last entry")
    return EntryBatch(first, tuple(entries), bool(last))


def _decode_entry(data: bytes, pos: int, previous: bytes) -> tuple[Entry, int, bytes]:
    code, flags, shared, rest, mode = _HEAD.unpack_from(data, pos)
    pos += _HEAD.size
    if code >= len(KIND_CODES) or mode > 0o7777 or shared > len(previous) or (flags & LINKED and code != 0):
        raise RemoteProtocolError("ENTRIES entry kind, mode or path malformed")
    path_bytes = previous[:shared] + data[pos : pos + rest]
    pos += rest
    if not path_bytes or len(path_bytes) != shared + rest or len(path_bytes) > MAX_PATH_BYTES:
        raise RemoteProtocolError("ENTRIES entry path malformed")
    path = from_wire(path_bytes)
    kind = KIND_CODES[code]
    layout = _COMMON_LAYOUTS[flags & COMMON]
    common = layout.unpack_from(data, pos)
    pos += layout.size
    size = mtime = uid = gid = None
    if flags & COMMON == COMMON:
        size, mtime, uid, gid = common
    elif common:
        size, mtime, uid, gid = _spread(common, flags)
    if size is not None and code != 0:
        raise RemoteProtocolError("ENTRIES entry size given for what is not a file")
    if (code in _LINK_KINDS) != bool(flags & TARGET) or (code in _DEVICES) != bool(flags & DEVICE):
        raise RemoteProtocolError("ENTRIES entry: a link needs a target and a device its number, others neither")
    linked = bool(flags & LINKED)
    if not flags & ~COMMON & ~LINKED:
        return Entry(path, kind, size, mode, mtime, uid=uid, gid=gid, linked=linked), pos, path_bytes
    entry = Entry(path, kind, size, mode, mtime, uid=uid, gid=gid, linked=linked)
    entry, pos = _with_rare_fields(data, pos, flags, entry)
    return entry, pos, path_bytes


def _spread(common: tuple[object, ...], flags: int) -> tuple[object, ...]:
    """The common fields present, in their places (size, mtime, uid, gid); None for those absent."""
    values = iter(common)
    size = next(values) if flags & SIZE else None
    mtime = next(values) if flags & MTIME else None
    return (size, mtime, *values) if flags & OWNER else (size, mtime, None, None)


def _with_rare_fields(data: bytes, pos: int, flags: int, entry: Entry) -> tuple[Entry, int]:
    target = identity = digest = device = None
    if flags & TARGET:
        target, pos = _text(data, pos, MAX_TARGET_BYTES, "target", from_wire)
        if not target or "\x00" in target:
            raise RemoteProtocolError("ENTRIES link target malformed")
    if flags & IDENTITY:
        identity, pos = _text(data, pos, MAX_IDENTITY_BYTES, "identity")
    if flags & DIGEST:
        raw = data[pos : pos + CONTENT_DIGEST_BYTES]
        if len(raw) != CONTENT_DIGEST_BYTES:
            raise RemoteProtocolError("ENTRIES digest malformed")
        digest, pos = raw.hex(), pos + CONTENT_DIGEST_BYTES
    if flags & DEVICE:
        (device,) = _U64.unpack_from(data, pos)
        pos += 8
    e = entry
    return (
        Entry(e.path, e.kind, e.size, e.mode, e.mtime_ns, target, identity, digest, e.uid, e.gid, device, e.linked),
        pos,
    )


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8")


def _text(data: bytes, pos: int, limit: int, what: str, decode: Callable[[bytes], str] = _utf8) -> tuple[str, int]:
    (n,) = _U16.unpack_from(data, pos)
    pos += _U16.size
    raw = data[pos : pos + n]
    if n > limit or len(raw) != n:
        raise RemoteProtocolError(f"ENTRIES {what} malformed")
    try:
        return decode(raw), pos + n
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"ENTRIES {what} is not valid UTF-8") from None
