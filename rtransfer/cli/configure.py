"""Options -> config: the checks that need the protocol's limits, and the one way to the peer
(a Way) the options ask for, kept apart from the typer layer (commands.py) and from
running (runner.py). A new way to reach a machine is a branch here, and its source in transport/."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from msgspec.structs import replace

from rtransfer.cli.listen import open_listener
from rtransfer.cli.options import (
    DEFAULT_WINDOW,
    RecvOptions,
    SendOptions,
    check_relay,
    looks_like_endpoint,
    names_a_file,
    parse_endpoint,
    parse_size,
    peer_endpoint,
    pull_command,
    push_command,
    split_send_arguments,
    stream_chunk_bytes,
)
from rtransfer.cli.remote import STDIO, STDIO_OVER_SSH
from rtransfer.codes import new_code, normalise_code
from rtransfer.crypto import TransferKeys
from rtransfer.errors import UsageError
from rtransfer.protocol.constants import MAX_CHUNK_BYTES, MAX_STREAMS, MAX_WINDOW, MIN_CHUNK_BYTES
from rtransfer.protocol.receiver import ReceiveLimits
from rtransfer.receiving.specials import DestPolicy
from rtransfer.session.config import RecvConfig, SendConfig
from rtransfer.transport.relay import Relay
from rtransfer.transport.retry import RetryPolicy
from rtransfer.transport.source import Dial, Listen, Way
from rtransfer.transport.ssh import SSH_CODE, Ssh
from rtransfer.transport.ssh_launch import SshCommand
from rtransfer.transport.stdio_link import StdioLink

if TYPE_CHECKING:
    from rtransfer.report import Reporter


def _chunk_bytes(options: SendOptions, sources: list[str]) -> int:
    chunk_bytes = parse_size(options.chunk_size) if options.chunk_size is not None else None
    chunk_bytes = chunk_bytes or stream_chunk_bytes(options.streams, tree=any(map(os.path.isdir, sources)))
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise UsageError(f"--chunk-size must be between {MIN_CHUNK_BYTES} and {MAX_CHUNK_BYTES} bytes")
    return chunk_bytes


def _rate_bps(options: SendOptions) -> int | None:
    rate_bps = parse_size(options.limit_rate) if options.limit_rate is not None else None
    if rate_bps is not None and rate_bps < 1024:
        raise UsageError("--limit-rate must be at least 1K (bytes per second)")
    return rate_bps


def _send_reach(
    options: SendOptions, ssh: SshCommand | None
) -> tuple[list[str], tuple[str, int], tuple[str, int] | None]:
    """The sources, the address (the receiver's, ours with --listen, or the relay's) and the relay."""
    if options.stdio and STDIO in options.arguments:  # its stdin is the transfer's: refused, not read as empty
        raise UsageError(f"{STDIO}: {STDIO_OVER_SSH}")
    if options.stdio or ssh is not None:
        return options.arguments[:-1] if ssh is not None else options.arguments, ("", 0), None
    relay = check_relay(options.relay, options.no_encrypt, ("--listen", options.listen))
    if relay is not None and options.arguments and looks_like_endpoint(options.arguments[-1]):
        raise UsageError(f"--relay and {options.arguments[-1]!r}: through a relay, the code finds the receiver")
    sources, destination = split_send_arguments(options.arguments, options.listen is not None or relay is not None)
    if relay is not None:
        return sources, relay, relay
    if destination is not None:
        return sources, peer_endpoint(destination), None
    return sources, parse_endpoint(options.listen or "", "0.0.0.0"), None


def _checked_window(options: SendOptions) -> int:
    if not 1 <= options.streams <= MAX_STREAMS:
        raise UsageError(f"--streams must be between 1 and {MAX_STREAMS}")
    window = options.window if options.window is not None else DEFAULT_WINDOW
    if not 1 <= window <= MAX_WINDOW:
        raise UsageError(f"--window must be between 1 and {MAX_WINDOW}")
    return window


def send_config(options: SendOptions, reporter: Reporter) -> SendConfig:
    """The send options checked, with the one way to the receiver: a listener or a relay are
    announced (with the code, made up unless given) before this returns."""
    ssh = push_command(options)
    sources, (host, port), relay = _send_reach(options, ssh)
    if ssh is not None or options.stdio:  # over ssh, which authenticates and encrypts: no code, no second cipher
        options = replace(options, code=SSH_CODE, no_encrypt=True)
    window = _checked_window(options)
    chunk_bytes, rate_bps = _chunk_bytes(options, sources), _rate_bps(options)
    if rate_bps is not None:
        from rtransfer.sending.ratelimit import chunk_under_limit

        chunk_bytes = chunk_under_limit(chunk_bytes, rate_bps, MIN_CHUNK_BYTES)
    options.retry.check()
    policy = RetryPolicy.for_retries(options.retry.retries, options.retry.retry_max_s)
    way, keys = _send_way(options, ssh, (host, port), relay is not None, policy.max_total_s, reporter)
    return SendConfig(
        sources,
        way,
        keys,
        options.name,
        chunk_bytes,
        window,
        options.retry.timeout_s,
        policy,
        encrypt=not options.no_encrypt,
        safe_links=options.safe_links,
        limit_rate_bps=rate_bps,
        streams=options.streams,
        whole_file=options.whole_file,
        checksum=options.checksum,
        compress=options.compress,
        try_direct=options.direct,
        stun=options.stun,
        filters=options.filters,
        delete=options.delete or options.delete_excluded,
        delete_excluded=options.delete_excluded,
        dry_run=options.dry_run,
    )


def _send_way(
    options: SendOptions,
    ssh: SshCommand | None,
    address: tuple[str, int],
    relay: bool,
    window_s: float,
    reporter: Reporter,
) -> tuple[Way, TransferKeys]:
    """The way to the receiver, and the keys (a code made up here, unless given, is shown)."""
    code = options.code if options.code is not None else options.secret
    if code is None and options.listen is None and not relay:
        raise UsageError("pass the code the receiver shows with --code (or a shared --secret)")
    made = code is None
    code = code or new_code()
    keys = TransferKeys(normalise_code(code), by_transport=ssh is not None or options.stdio)
    host, port = address
    if ssh is not None:
        return Ssh(ssh, reporter.warning, tell=reporter.item), keys
    if options.stdio:
        return StdioLink(reporter.joinable), keys
    if relay:
        reporter.listening(host, port, code if made else None, role="send", relay=True)
        return Relay(host, port, code, keys, window_s, patient=made), keys
    if options.listen is not None:
        return Listen(_announced(host, port, code if made else None, "send", reporter)), keys
    return Dial(host, port, hint=" (is `rtransfer recv` running there?)"), keys


def _announced(host: str, port: int, code: str | None, role: str, reporter: Reporter) -> socket.socket:
    """A listening socket, opened and announced, with the code when it was made up here."""
    listener = open_listener(host, port)
    bound_host, bound_port = listener.getsockname()[:2]
    reporter.listening(bound_host, bound_port, code, role=role)
    return listener


def recv_config(
    options: RecvOptions, host: str, port: int, code: str, listener: socket.socket | None, reporter: Reporter
) -> RecvConfig:
    """The recv options checked, with the one way to the sender (its listener opened, and the
    listener or the relay announced, by the caller, before the heavy imports)."""
    ssh = pull_command(options)
    if options.stdio and options.dest == STDIO:  # its stdout is the transfer's: refused, not written away
        raise UsageError(f"{STDIO}: {STDIO_OVER_SSH}")
    if ssh is not None or options.stdio:
        code, options = SSH_CODE, replace(options, no_encrypt=True)
    keys = TransferKeys(normalise_code(code), by_transport=ssh is not None or options.stdio)
    policy = RetryPolicy.for_retries(options.retry.retries, options.retry.retry_max_s)
    if ssh is not None:
        way: Way = Ssh(ssh, reporter.warning)
    elif options.stdio:
        way = StdioLink(reporter.joinable)
    elif options.relay is not None:
        way = Relay(host, port, code, keys, policy.max_total_s, patient=options.code is None)
    elif options.connect is not None:
        way = Dial(host, port, hint=" (is `rtransfer send --listen` running there?)")
    else:
        assert listener is not None
        way = Listen(listener)
    limits = ReceiveLimits(
        max_entries=options.max_files, max_total_bytes=parse_size(options.max_bytes), max_streams=options.max_streams
    )
    return RecvConfig(
        options.dest,
        way,
        keys,
        options.retry.timeout_s,
        _dest_policy(options),
        limits,
        encrypt=not options.no_encrypt,
        connect_policy=policy,
        try_direct=options.direct,
        stun=options.stun,
    )


def _dest_policy(options: RecvOptions) -> DestPolicy:
    keep = options.keep
    return DestPolicy(
        overwrite=options.overwrite,
        safe_links=options.safe_links,
        delete=options.delete or options.delete_excluded,
        delete_excluded=options.delete_excluded,
        dry_run=options.dry_run,
        direct_io=not options.buffered,
        owner=keep.owner,
        group=keep.group,
        devices=keep.devices,
        file_dest=names_a_file(options),
    )
