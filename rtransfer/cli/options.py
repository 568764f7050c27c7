"""What the user typed, checked and turned into a config: pure (no I/O beyond checking DEST),
so every option's rule is tested with plain calls. Heavy modules stay out: this runs before
the receiver says it listens."""

from __future__ import annotations

import re
from pathlib import Path

from msgspec import Struct, field

from rtransfer.cli.remote import RemotePath, far_session, flags_on, receiver_flags, remote_path
from rtransfer.errors import UsageError
from rtransfer.receiving.dest import check_dest
from rtransfer.transport.ssh_launch import SshCommand

DEFAULT_PORT = 7373
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
DEFAULT_STREAMS = 1
DEFAULT_WINDOW = 2
DEFAULT_RETRIES = 20  # the one retry policy's defaults (retry.RetryPolicy agrees: a test checks)
DEFAULT_RETRY_MAX_S = 60.0
_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)
_ENDPOINT = re.compile(r"^(\[[^\]]*\]|[^/:\[\]]+):\d+$")
RELAY_ENV = "RTRANSFER_RELAY"
STUN_ENV = "RTRANSFER_STUN"  # one or two HOST:PORT, separated by a comma


def stream_chunk_bytes(streams: int, tree: bool = False) -> int:
    """8 MiB chunks on one connection, smaller on more, two in flight on each: 16 MiB in flight in
    all whatever their number, so the receiver's buffers stay in budget. (Larger chunks on a few
    streams measured no faster on loopback, for more memory.) Half that for a ``tree``: its packs
    keep the receiver's buffers busy while thousands of files are made from them, so all of its
    budget is in use at once (a Python installation peaked at 107 MiB a side with 8 MiB, 79 with
    4 MiB, no slower: bench/README.md)."""
    return max(256 << 10, (8 << 20 if not tree else 4 << 20) // streams)


def parse_size(text: str) -> int:
    """'1M', '64KiB', '4096' -> bytes (binary units)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"invalid size {text!r} (try 1M, 256K or a number of bytes)")
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")  # type: ignore[no-any-return]


def parse_endpoint(text: str, default_host: str | None) -> tuple[str, int]:
    """HOST:PORT, [v6]:PORT, or (when a default host is given) :PORT / PORT."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        if default_host is None:
            raise UsageError(f"invalid destination {text!r}: expected HOST:PORT")
        host = default_host
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:  # not "²"
        raise UsageError(f"invalid port in {text!r}: expected a number from 0 to 65535")
    return host, int(port_text)


def peer_endpoint(text: str) -> tuple[str, int]:
    """Where the peer listens: a port of 0 cannot be connected to."""
    host, port = parse_endpoint(text, None)
    if port == 0:
        raise UsageError(f"invalid port in {text!r}: port 0 means 'any' to a listener; give the port it shows")
    return host, port


def split_recv_arguments(arguments: list[str]) -> tuple[list[RemotePath], str]:
    """``recv [DEST]`` receives; ``recv HOST:SOURCE... DEST`` pulls: with two or more arguments
    the last is DEST, and every other one must be remote, on one host."""
    if len(arguments) <= 1:
        dest = arguments[0] if arguments else "."
        if remote_path(dest) is not None:
            raise UsageError(f"{dest!r} is remote: to pull it, say where it goes (rtransfer recv {dest} DEST)")
        return [], dest
    *sources, dest = arguments
    if remote_path(dest) is not None:
        raise UsageError(f"DEST {dest!r} is remote: recv writes here (to push there, use send)")
    remotes = []
    for text in sources:
        remote = remote_path(text)
        if remote is None:
            hint = f"; to dial a sender listening there, use --connect {text}" if _ENDPOINT.match(text) else ""
            raise UsageError(f"{text!r} is not a remote HOST:PATH to pull from (a digit-only path: host:./9000){hint}")
        remotes.append(remote)
    if len({r.host for r in remotes}) > 1:
        raise UsageError("remote sources on different hosts: pull from one host at a time")
    return remotes, dest


def looks_like_endpoint(text: str) -> bool:
    """HOST:PORT, and no local file of that name."""
    return bool(_ENDPOINT.match(text)) and not Path(text).exists()


def choose_relay(flag: str | None, env: str | None, other_way: bool) -> str | None:
    """``--relay``, or else the environment's relay, unless the command names another way to the
    peer (an address to dial, --listen, --connect): a relay set for every transfer in a shell's
    profile does not stop a direct one."""
    if flag is not None:
        return flag
    return None if other_way or not env else env


def stun_servers(flags: tuple[str, ...], env: str | None, direct: bool) -> tuple[tuple[str, int], ...]:
    """--stun (at most twice), or else the environment's: none with --no-direct, which asks none."""
    given = flags or tuple(s.strip() for s in (env or "").split(",") if s.strip())
    if len(given) > 2:
        raise UsageError("--stun is given at most twice: a second server tells a NAT that maps randomly")
    try:
        return tuple(peer_endpoint(s) for s in given) if direct else ()
    except UsageError as exc:
        raise UsageError(f"--stun: {exc}") from None


def check_relay(relay: str | None, no_encrypt: bool, *others: tuple[str, object]) -> tuple[str, int] | None:
    """The relay's address; it excludes the other ways to the peer, and clear file contents."""
    if relay is None:
        return None
    for flag, value in others:
        if value:
            raise UsageError(f"--relay and {flag}: through a relay, neither side listens nor dials the other")
    if no_encrypt:
        raise UsageError("--no-encrypt is refused with --relay: whoever runs the relay would read the files")
    return peer_endpoint(relay)


def split_send_arguments(arguments: list[str], listen: bool = False) -> tuple[list[str], str | None]:
    """``SOURCE... HOST:PORT``: the last argument is where they go (with --listen or a relay,
    nowhere: all are sources)."""
    if listen:
        if not arguments:
            raise UsageError("missing SOURCE...: what to send")
        return arguments, None
    if not arguments:
        raise UsageError("missing SOURCE... and HOST:PORT: what to send, and where")
    if len(arguments) == 1:
        raise UsageError(f"missing HOST:PORT after {arguments[0]!r}: where should it go?")
    return arguments[:-1], arguments[-1]


class Keep(Struct, frozen=True):
    """-o, -g and --devices, as typed: what a receiver applies of the owners, groups and device
    nodes the sender lists (specials.DestPolicy)."""

    owner: bool = False
    group: bool = False
    devices: bool = False

    def flags(self) -> tuple[str, ...]:
        return flags_on({"--owner": self.owner, "--group": self.group, "--devices": self.devices})


class RetryOptions(Struct, frozen=True):
    retries: int = DEFAULT_RETRIES
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    timeout_s: float = 30.0

    def check(self) -> None:
        if not self.timeout_s > 0:
            raise UsageError("--timeout must be positive")
        if self.retries < 0 or self.retry_max_s < 0:
            raise UsageError("--retries and --retry-max-seconds must not be negative")


class SendOptions(Struct, frozen=True):
    """``send``'s options as typed (sizes as text): ``to_config`` checks them."""

    arguments: list[str]
    name: str | None = None
    chunk_size: str | None = None
    window: int | None = None
    streams: int = DEFAULT_STREAMS
    code: str | None = None
    secret: str | None = None
    no_encrypt: bool = False
    retry: RetryOptions = field(default_factory=RetryOptions)
    safe_links: bool = False
    limit_rate: str | None = None
    compress: bool = False
    checksum: bool = False
    whole_file: bool = False
    listen: str | None = None  # take the receiver's connection here instead of dialing it
    relay: str | None = None  # meet the receiver at this relay (from --relay or the environment)
    direct: bool = True  # through a relay, try a direct path too
    stun: tuple[tuple[str, int], ...] = ()  # STUN servers (--stun, or the environment's), to punch through NATs
    rsh: str = "ssh"  # -e: the ssh command and its options
    remote_path: str = "rtransfer"  # the program to run on the far side
    stdio: bool = False  # run as the far side of an ssh transfer
    overwrite: bool = False  # a push's option for the far receiver
    filters: tuple[str, ...] = ()  # include/exclude rules in the order given, "+ PAT" / "- PAT"
    delete: bool = False
    delete_excluded: bool = False
    dry_run: bool = False
    keep: Keep = field(default_factory=Keep)  # a push's options for the far receiver


class RecvOptions(Struct, frozen=True):
    dest: str = "."
    listen: str | None = None  # default: DEFAULT_LISTEN, unless --connect
    overwrite: bool = False
    secret: str | None = None
    no_encrypt: bool = False
    max_bytes: str = "1024T"
    max_files: int = 1_000_000
    max_streams: int = 16
    retry: RetryOptions = field(default_factory=RetryOptions)
    buffered: bool = False
    safe_links: bool = False
    connect: str | None = None  # dial a listening sender instead of listening
    code: str | None = None  # the code that sender shows (with --connect or --relay)
    relay: str | None = None  # meet the sender at this relay (from --relay or the environment)
    direct: bool = True  # through a relay, try a direct path too
    stun: tuple[tuple[str, int], ...] = ()  # see SendOptions
    rsh: str = "ssh"
    remote_path: str = "rtransfer"
    stdio: bool = False
    pull: tuple[RemotePath, ...] = ()  # recv HOST:SOURCE... DEST
    sender_flags: tuple[str, ...] = ()  # a pull's options for the far sender (--checksum, --compress, --whole-file)
    delete: bool = False
    delete_excluded: bool = False
    dry_run: bool = False
    keep: Keep = field(default_factory=Keep)


RULE_OPTIONS = {"--exclude": False, "--include": True, "--exclude-from": False, "--include-from": True}


def ordered_rules(args: list[str], given: dict[str, list[str]]) -> tuple[str, ...]:
    """The include/exclude rules in the order typed, as "+ PAT" / "- PAT": the first match wins, so
    their order matters, and the parser keeps each option's values apart. ``args`` is the command
    line; ``given`` each option's values as parsed, which the order found must agree with."""
    from rtransfer.filters import filters_from, read_rule_file

    found: list[tuple[str, str]] = []
    i = 0
    while i < len(args) and args[i] != "--":
        name, eq, value = args[i].partition("=")
        if name in RULE_OPTIONS:
            if not eq and i + 1 < len(args):
                i += 1
                value = args[i]
            found.append((name, value))
        i += 1
    if sorted(found) != sorted((name, v) for name, values in given.items() for v in values):
        raise UsageError("could not tell the order of --include/--exclude: give each as --exclude=PATTERN")
    rules: list[tuple[bool, str]] = []
    for name, value in found:
        lines = read_rule_file(value) if name.endswith("-from") else [value]
        rules.extend((RULE_OPTIONS[name], line) for line in lines)
    return filters_from(rules).specs


def recv_listen(options: RecvOptions) -> tuple[str, int]:
    """Checked before listening (or dialing): the address, the limits, and DEST."""
    relay = check_relay(options.relay, options.no_encrypt, ("--listen", options.listen), ("--connect", options.connect))
    if options.sender_flags and not options.pull:
        raise UsageError(f"{options.sender_flags[0]} on recv is for a pull over ssh (the sender decides otherwise)")
    if options.pull or options.stdio:
        if options.listen is not None or options.connect is not None:
            raise UsageError("pulling over ssh, this side neither listens nor dials: ssh reaches the sender")
        host, port = "", 0
    elif relay is not None:
        host, port = relay
    elif options.connect is not None:
        if options.listen is not None:
            raise UsageError("--listen and --connect: a receiver either listens or dials its sender")
        if options.code is None and options.secret is None:
            raise UsageError("--connect needs the code the sender shows (--code) or a shared --secret")
        host, port = peer_endpoint(options.connect)
    else:
        if options.code is not None:
            raise UsageError("--code is for --connect or --relay: a listening receiver makes up its own code")
        host, port = parse_endpoint(options.listen or DEFAULT_LISTEN, "0.0.0.0")
    options.retry.check()
    if options.max_files < 1:
        raise UsageError("--max-files must be at least 1")
    if options.max_streams < 1:
        raise UsageError("--max-streams must be at least 1")
    parse_size(options.max_bytes)
    if options.dest != "-":
        check_dest(Path(options.dest), names_a_file(options))
    return host, port


def names_a_file(options: RecvOptions) -> bool:
    """Over ssh, as scp and rsync: a DEST with no trailing slash may name the one file sent."""
    return bool(options.stdio or options.pull) and not options.dest.endswith("/") and options.dest != "-"


def push_command(options: SendOptions) -> SshCommand | None:
    """``send SOURCE... [USER@]HOST:DEST``: the receiver runs there, started over ssh."""
    push = not (options.listen is not None or options.relay is not None or options.stdio or len(options.arguments) < 2)
    remote = remote_path(options.arguments[-1]) if push else None
    if remote is None:
        refused = (("--overwrite",) if options.overwrite else ()) + options.keep.flags()
        if refused:
            raise UsageError(f"{refused[0]} on send is for a push over ssh (the receiver decides otherwise)")
        return None
    flags = receiver_flags(
        options.overwrite, options.delete, options.delete_excluded, options.dry_run, options.keep.flags()
    )
    return far_session(
        options.rsh, options.remote_path, options.retry.timeout_s, remote.host, "recv", [remote.path or "."], flags
    )


def pull_command(options: RecvOptions) -> SshCommand | None:
    """``recv [USER@]HOST:SOURCE... DEST``: the sender runs there, started over ssh."""
    if not options.pull:
        return None
    paths = [r.path or "." for r in options.pull]
    host = options.pull[0].host
    return far_session(
        options.rsh, options.remote_path, options.retry.timeout_s, host, "send", paths, options.sender_flags
    )
