"""What the CLI hands the session: one frozen config per command, with the one way to the peer
(``way``, made by cli/configure.py) and the transfer's keys, which that way may share."""

from __future__ import annotations

from msgspec import Struct, field

from rtransfer.crypto import TransferKeys
from rtransfer.protocol.receiver import ReceiveLimits
from rtransfer.receiving.specials import DestPolicy
from rtransfer.transport.retry import RetryPolicy
from rtransfer.transport.source import Way


class SendConfig(Struct, frozen=True):
    sources: list[str]
    way: Way  # where the receiver's connections come from
    keys: TransferKeys  # the code, then the session's secret (crypto.TransferKeys)
    stdin_name: str | None = None
    chunk_bytes: int = 8 * 1024 * 1024
    window: int = 2
    timeout_s: float = 30.0
    connect_policy: RetryPolicy = field(default_factory=RetryPolicy)
    encrypt: bool = True
    safe_links: bool = False  # skip links that point outside the transfer, instead of sending them as they are
    limit_rate_bps: float | None = None  # hold the whole transfer to this many bytes per second
    streams: int = 1  # connections to spread the chunks over
    whole_file: bool = False  # never a delta against the receiver's old copy
    checksum: bool = False  # list each file's content digest: the receiver skips by content, not size and mtime
    compress: bool = False  # zstd each chunk that shrinks, at a level that follows the bottleneck
    try_direct: bool = True  # through a relay, try a direct path too (--no-direct: never, and share no address)
    stun: tuple[tuple[str, int], ...] = ()  # STUN servers (--stun): where the NAT maps the ports to punch from
    filters: tuple[str, ...] = ()  # include/exclude rules ("+ PAT"/"- PAT"), first match wins (filters.py)
    delete: bool = False  # ask the receiver to delete what its copies of our directories hold beyond the list
    delete_excluded: bool = False  # ... and what our rules exclude there too
    dry_run: bool = False  # ask the receiver only to say what it would do


class RecvConfig(Struct, frozen=True):
    dest: str
    way: Way  # where the sender's connections come from
    keys: TransferKeys
    timeout_s: float = 30.0
    policy: DestPolicy = field(default_factory=DestPolicy)  # what this side lets the sender do in DEST
    limits: ReceiveLimits = field(default_factory=ReceiveLimits)
    encrypt: bool = True
    connect_policy: RetryPolicy = field(default_factory=RetryPolicy)  # how long a broken transfer waits for its sender
    try_direct: bool = True  # see SendConfig
    stun: tuple[tuple[str, int], ...] = ()
