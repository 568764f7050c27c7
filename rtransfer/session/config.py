"""What the CLI hands the session: one frozen config per command."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from rtransfer.protocol.receiver import ReceiveLimits
from rtransfer.receiving.specials import DestPolicy
from rtransfer.transport.retry import RetryPolicy
from rtransfer.transport.ssh import SshCommand


@dataclass(frozen=True)
class SendConfig:
    sources: list[str]
    host: str
    port: int
    stdin_name: str | None = None
    chunk_bytes: int = 8 * 1024 * 1024
    window: int = 2
    timeout_s: float = 30.0
    connect_policy: RetryPolicy = field(default_factory=RetryPolicy)
    code: str = ""
    encrypt: bool = True
    safe_links: bool = False  # skip links that point outside the transfer, instead of sending them as they are
    limit_rate_bps: float | None = None  # hold the whole transfer to this many bytes per second
    streams: int = 1  # connections to spread the chunks over
    whole_file: bool = False  # never a delta against the receiver's old copy
    checksum: bool = False  # list each file's content digest: the receiver skips by content, not size and mtime
    compress: bool = False  # zstd each chunk that shrinks, at a level that follows the bottleneck
    # send --listen: take the receiver's connections on this socket (opened by the caller) instead of dialing
    listener: socket.socket | None = None
    relay: tuple[str, int] | None = None  # meet the receiver at this relay instead (host and port are the relay's)
    made_code: bool = False  # this side made up the code and showed it: at a relay it waits as long as it takes
    direct: bool = True  # through a relay, try a direct path too (--no-direct: never, and share no address)
    ssh: SshCommand | None = None  # push over ssh: each connection is an ssh session running the receiver there
    stdio: bool = False  # the far side of an ssh transfer: the one connection is standard input and output
    filters: tuple[str, ...] = ()  # include/exclude rules ("+ PAT"/"- PAT"), first match wins (filters.py)
    delete: bool = False  # ask the receiver to delete what its copies of our directories hold beyond the list
    delete_excluded: bool = False  # ... and what our rules exclude there too
    dry_run: bool = False  # ask the receiver only to say what it would do


@dataclass(frozen=True)
class RecvConfig:
    dest: str
    host: str
    port: int
    timeout_s: float = 30.0
    policy: DestPolicy = field(default_factory=DestPolicy)  # what this side lets the sender do in DEST
    limits: ReceiveLimits = field(default_factory=ReceiveLimits)
    code: str | None = None  # None: make one up and show it
    encrypt: bool = True
    connect_policy: RetryPolicy = field(default_factory=RetryPolicy)  # how long a broken transfer waits for its sender
    # Opened, and announced with the code, by the caller before it imported this module (see listen.py).
    listener: socket.socket | None = None
    dial: bool = False  # recv --connect: dial the sender at host:port instead of listening
    relay: tuple[str, int] | None = None  # meet the sender at this relay instead
    made_code: bool = True  # see SendConfig
    direct: bool = True  # see SendConfig
    ssh: SshCommand | None = None  # pull over ssh: each connection is an ssh session running the sender there
    stdio: bool = False  # see SendConfig
