"""Command line: parse (typer, here) -> check the options into a config (options.py,
configure.py) -> run (transfer.py, runner.py) -> the outcome's exit code.

Heavy modules (asyncio driver, hashing, rich) are imported inside the commands so that
``rtransfer --help`` starts fast. For the same reason this module does not postpone its
annotations: typer would evaluate every option's annotation string on each start, which
cost more than importing the types up front.
"""

import os
import sys
from typing import Annotated, Any

import typer
import typer.core
import typer.exceptions
import typer.main
from msgspec.structs import replace
from typer import _click as click  # typer 0.28 carries its own click and depends on none

from rtransfer import __version__
from rtransfer.cli import transfer
from rtransfer.cli.options import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_MAX_S,
    DEFAULT_STREAMS,
    RELAY_ENV,
    RULE_OPTIONS,
    STUN_ENV,
    Keep,
    RecvOptions,
    RetryOptions,
    SendOptions,
    choose_relay,
    looks_like_endpoint,
    ordered_rules,
    split_recv_arguments,
    stun_servers,
)
from rtransfer.cli.remote import remote_path, sender_flags
from rtransfer.cli.transfer import exit_code, fail, make_reporter
from rtransfer.errors import EXIT_SIGINT, EXIT_USAGE, UsageError

app = typer.Typer(
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Send files over TCP with sequence numbers, ACKs, resends and end-to-end integrity checks.",
)
SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


_opt = typer.Option


Arguments = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="SOURCE... [HOST:PORT | [USER@]HOST:DEST]",
        show_default=False,
        help="What to send ('-': stdin), and where: a receiver's address, or over ssh a directory there.",
    ),
]
RecvArguments = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[[USER@]HOST:SOURCE...] [DEST]",
        show_default=False,
        help="Directory to write into ('-': stdout; default: here); before it, what to pull over ssh.",
    ),
]
Rsh = Annotated[
    str,
    _opt(
        "--rsh",
        "-e",
        metavar="COMMAND",
        envvar="RTRANSFER_RSH",
        help="The ssh command and its options (as rsync's -e).",
    ),
]
RemoteProgram = Annotated[
    str,
    _opt(
        "--remote-path", metavar="PATH", help="The rtransfer program on the far side of ssh (as rsync's --rsync-path)."
    ),
]
Stdio = Annotated[
    bool, _opt("--stdio", hidden=True, help="Be the far side of an ssh transfer: the protocol on stdin/stdout.")
]
Name = Annotated[str | None, _opt("--name", metavar="NAME", help="Name the receiver stores standard input under.")]
Json = Annotated[bool, _opt("--json", help="Newline-delimited JSON events on stdout (stderr if stdout carries data).")]
Quiet = Annotated[bool, _opt("--quiet", "-q", help="Print nothing but errors (and, listening, the code).")]
Verbose = Annotated[bool, _opt("--verbose", "-v", help="A line per file (digest and name), for trees too.")]
NoEncrypt = Annotated[
    bool, _opt("--no-encrypt", help="Send file contents in clear (trusted networks only); the handshake stays.")
]
Secret = Annotated[
    str | None,
    _opt("--secret", metavar="SECRET", envvar="RTRANSFER_SECRET", help="Shared secret instead of a code (scripts)."),
]
Timeout = Annotated[float, _opt("--timeout", metavar="SECONDS", help="How long a silent peer is tolerated.")]
Retries = Annotated[int, _opt("--retries", metavar="N", help="Retries in one outage before giving up.")]
RetryMax = Annotated[
    float, _opt("--retry-max-seconds", metavar="SECONDS", help="How long one outage may last before giving up.")
]
ChunkSize = Annotated[
    str | None,
    _opt(
        "--chunk-size",
        metavar="SIZE",
        help="Bytes per chunk (K/M; default 8M, 4M for a tree, divided by --streams).",
        show_default=False,
    ),
]
Window = Annotated[
    int | None,
    _opt("--window", metavar="CHUNKS", help="Chunks in flight on each connection (default 2).", show_default=False),
]
Streams = Annotated[int, _opt("--streams", metavar="N", help="Connections to spread the transfer over.")]
Code = Annotated[
    str | None, _opt("--code", metavar="CODE", help="The code the receiver shows (with --relay: made up if not given).")
]
SafeLinksSend = Annotated[bool, _opt("--safe-links", help="Skip symbolic links that point outside the tree.")]
SafeLinksRecv = Annotated[bool, _opt("--safe-links", help="Refuse a symbolic link that points outside DEST.")]
LimitRate = Annotated[
    str | None, _opt("--limit-rate", metavar="RATE", help="At most RATE bytes per second (K/M/G, as curl's).")
]
Compress = Annotated[bool, _opt("--compress", "-z", help="Compress chunks with zstd (those that shrink), as rsync -z.")]
Checksum = Annotated[
    bool, _opt("--checksum", "-c", help="Skip files the receiver has by content (BLAKE3), not size and mtime.")
]
WholeFile = Annotated[bool, _opt("--whole-file", "-W", help="Send changed files whole, never as a delta.")]
Listen = Annotated[
    str | None,
    _opt(
        "--listen", "-l", metavar="[HOST:]PORT", help="Address to listen on (default 0.0.0.0:7373); port 0 picks one."
    ),
]
SendListen = Annotated[
    str | None,
    _opt("--listen", "-l", metavar="[HOST:]PORT", help="Wait here for the receiver to dial in, instead of dialing it."),
]
Connect = Annotated[
    str | None, _opt("--connect", metavar="HOST:PORT", help="Dial a sender that listens (send --listen).")
]
Relay = Annotated[
    str | None,
    _opt(
        "--relay",
        metavar="HOST:PORT",
        help=f"Meet the peer at this transit relay, when neither side can accept a connection (also {RELAY_ENV}).",
        show_default=False,
    ),
]
NoDirect = Annotated[
    bool, _opt("--no-direct", help="Through a relay, keep every byte on it: share no address, try no direct path.")
]
Stun = Annotated[
    list[str] | None,
    _opt(
        "--stun",
        metavar="HOST:PORT",
        help=f"Through a relay, learn from this STUN server how the NAT maps the port to punch from, and punch"
        f" through both NATs; twice: a second server, to tell a NAT that maps at random ({STUN_ENV}).",
        show_default=False,
    ),
]
RecvCode = Annotated[
    str | None, _opt("--code", metavar="CODE", help="With --connect or --relay: the code the sender shows.")
]
Overwrite = Annotated[bool, _opt("--overwrite", help="Replace files that already exist in DEST.")]
PushOverwrite = Annotated[bool, _opt("--overwrite", help="Pushing over ssh: replace files already at DEST there.")]
PullChecksum = Annotated[bool, _opt("--checksum", "-c", help="Pulling over ssh: skip files here by content.")]
PullCompress = Annotated[bool, _opt("--compress", "-z", help="Pulling over ssh: the far side compresses chunks.")]
PullStreams = Annotated[
    int, _opt("--streams", metavar="N", help="Pulling over ssh: ssh sessions to spread the transfer over.")
]
PullWholeFile = Annotated[bool, _opt("--whole-file", "-W", help="Pulling over ssh: changed files whole, no delta.")]
Exclude = Annotated[
    list[str] | None, _opt("--exclude", metavar="PATTERN", help="Leave out what matches (rsync's rules; repeatable).")
]
Include = Annotated[
    list[str] | None,
    _opt("--include", metavar="PATTERN", help="Keep what matches, though a later --exclude matches it too."),
]
ExcludeFrom = Annotated[
    list[str] | None, _opt("--exclude-from", metavar="FILE", help="Exclude patterns from FILE, one a line.")
]
IncludeFrom = Annotated[
    list[str] | None, _opt("--include-from", metavar="FILE", help="Include patterns from FILE, one a line.")
]
Delete = Annotated[
    bool, _opt("--delete", help="Delete what the transfer's directories hold at the receiver beyond what is sent.")
]
DeleteExcluded = Annotated[
    bool, _opt("--delete-excluded", help="With --delete, delete what the rules exclude at the receiver too.")
]
Owner = Annotated[bool, _opt("--owner", "-o", help="As root: give files the owners listed; keep setuid/setgid bits.")]
Group = Annotated[bool, _opt("--group", "-g", help="As root: give files the groups listed.")]
Devices = Annotated[bool, _opt("--devices", help="As root: make the device nodes listed (skipped otherwise).")]
PushOwner = Annotated[bool, _opt("--owner", "-o", help="Pushing over ssh: the far receiver's -o.")]
PushGroup = Annotated[bool, _opt("--group", "-g", help="Pushing over ssh: the far receiver's -g.")]
PushDevices = Annotated[bool, _opt("--devices", help="Pushing over ssh: the far receiver's --devices.")]
DryRun = Annotated[
    bool, _opt("--dry-run", "-n", help="Say what would be sent, replaced or deleted; change nothing on either side.")
]
MaxBytes = Annotated[str, _opt("--max-bytes", metavar="SIZE", help="Refuse transfers declaring more (K/M/G/T).")]
MaxFiles = Annotated[int, _opt("--max-files", metavar="N", help="Refuse transfers of more entries.")]
MaxStreams = Annotated[int, _opt("--max-streams", metavar="N", help="Refuse transfers asking for more connections.")]
Buffered = Annotated[bool, _opt("--buffered", help="Write large files through the page cache, not direct I/O.")]


class _Command(typer.core.TyperCommand):
    """Keeps the command line as typed: the order of --include and --exclude decides (rsync's)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["args"] = list(args)
        return super().parse_args(ctx, args)


def _rules(ctx: typer.Context, *given: list[str] | None) -> tuple[str, ...]:
    """--exclude, --include, --exclude-from and --include-from, in the order typed."""
    return ordered_rules(
        ctx.meta.get("args", []), {name: list(v or []) for name, v in zip(RULE_OPTIONS, given, strict=True)}
    )


@app.command(cls=_Command)
def send(
    ctx: typer.Context,
    arguments: Arguments = None,
    name: Name = None,
    json_output: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    timeout: Timeout = 30.0,
    chunk_size: ChunkSize = None,
    window: Window = None,
    streams: Streams = DEFAULT_STREAMS,
    code: Code = None,
    secret: Secret = None,
    no_encrypt: NoEncrypt = False,
    retries: Retries = DEFAULT_RETRIES,
    retry_max_seconds: RetryMax = DEFAULT_RETRY_MAX_S,
    safe_links: SafeLinksSend = False,
    limit_rate: LimitRate = None,
    compress: Compress = False,
    checksum: Checksum = False,
    whole_file: WholeFile = False,
    listen: SendListen = None,
    relay: Relay = None,
    no_direct: NoDirect = False,
    stun: Stun = None,
    rsh: Rsh = "ssh",
    remote_program: RemoteProgram = "rtransfer",
    stdio: Stdio = False,
    overwrite: PushOverwrite = False,
    exclude: Exclude = None,
    include: Include = None,
    exclude_from: ExcludeFrom = None,
    include_from: IncludeFrom = None,
    delete: Delete = False,
    delete_excluded: DeleteExcluded = False,
    dry_run: DryRun = False,
    owner: PushOwner = False,
    group: PushGroup = False,
    devices: PushDevices = False,
) -> int:
    """Send files, directories or standard input ('-'): to SOURCE... HOST:PORT, [USER@]HOST:DEST
    over ssh, --listen [HOST:]PORT for the receiver to connect, or --relay HOST:PORT."""
    reporter = make_reporter(json_output, quiet, data_on_stdout=stdio, verbose=verbose)
    retry = RetryOptions(retries, retry_max_seconds, timeout)
    options = SendOptions(arguments or [], name, chunk_size, window, streams, code, secret, no_encrypt, retry)
    options = replace(options, rsh=rsh, remote_path=remote_program, stdio=stdio, overwrite=overwrite)
    options = replace(options, safe_links=safe_links, limit_rate=limit_rate, compress=compress, checksum=checksum)
    named = bool(arguments and (looks_like_endpoint(arguments[-1]) or remote_path(arguments[-1])))
    direct = listen is not None or stdio or named
    relay = choose_relay(relay, os.environ.get(RELAY_ENV), other_way=direct)
    options = replace(options, whole_file=whole_file, listen=listen, relay=relay, direct=not no_direct)
    try:
        rules = _rules(ctx, exclude, include, exclude_from, include_from)
        options = replace(options, stun=stun_servers(tuple(stun or ()), os.environ.get(STUN_ENV), not no_direct))
    except UsageError as exc:
        return fail(reporter, exc)
    options = replace(options, filters=rules, delete=delete, delete_excluded=delete_excluded, dry_run=dry_run)
    return transfer.send(replace(options, keep=Keep(owner, group, devices)), reporter)


@app.command(cls=_Command)
def recv(
    ctx: typer.Context,
    arguments: RecvArguments = None,
    listen: Listen = None,
    json_output: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    timeout: Timeout = 30.0,
    overwrite: Overwrite = False,
    secret: Secret = None,
    no_encrypt: NoEncrypt = False,
    max_bytes: MaxBytes = "1024T",
    max_files: MaxFiles = 1_000_000,
    max_streams: MaxStreams = 16,
    retries: Retries = DEFAULT_RETRIES,
    retry_max_seconds: RetryMax = DEFAULT_RETRY_MAX_S,
    buffered: Buffered = False,
    safe_links: SafeLinksRecv = False,
    connect: Connect = None,
    code: RecvCode = None,
    relay: Relay = None,
    no_direct: NoDirect = False,
    stun: Stun = None,
    rsh: Rsh = "ssh",
    remote_program: RemoteProgram = "rtransfer",
    stdio: Stdio = False,
    checksum: PullChecksum = False,
    compress: PullCompress = False,
    whole_file: PullWholeFile = False,
    streams: PullStreams = 1,
    exclude: Exclude = None,
    include: Include = None,
    exclude_from: ExcludeFrom = None,
    include_from: IncludeFrom = None,
    delete: Delete = False,
    delete_excluded: DeleteExcluded = False,
    dry_run: DryRun = False,
    owner: Owner = False,
    group: Group = False,
    devices: Devices = False,
) -> int:
    """Receive one transfer into DEST: listening, --connect, --relay, or pulling HOST:SOURCE over ssh."""
    try:
        pull, dest = split_recv_arguments(arguments or [])
    except UsageError as exc:
        return fail(make_reporter(json_output, quiet, data_on_stdout=False), exc)
    reporter = make_reporter(json_output, quiet, data_on_stdout=dest == "-" or stdio, verbose=verbose)
    retry = RetryOptions(retries, retry_max_seconds, timeout)
    options = RecvOptions(dest, listen, overwrite, secret, no_encrypt, max_bytes, max_files, max_streams, retry)
    options = replace(options, buffered=buffered, safe_links=safe_links, connect=connect, code=code, relay=relay)
    options = replace(options, direct=not no_direct, rsh=rsh, remote_path=remote_program, stdio=stdio, pull=tuple(pull))
    try:
        rules = _rules(ctx, exclude, include, exclude_from, include_from)
        options = replace(options, stun=stun_servers(tuple(stun or ()), os.environ.get(STUN_ENV), not no_direct))
    except UsageError as exc:
        return fail(reporter, exc)
    flags = sender_flags(checksum, compress, whole_file, streams, rules)
    options = replace(options, sender_flags=flags, delete=delete, delete_excluded=delete_excluded, dry_run=dry_run)
    return transfer.recv(replace(options, keep=Keep(owner, group, devices)), reporter)


@app.command(hidden=True)
def join(
    path: Annotated[str, typer.Argument(metavar="SOCKET")],
    stdio: Stdio = False,
    json_output: Json = False,
    timeout: Timeout = 30.0,
) -> int:
    """The far side of a further ssh session (--streams): join the running transfer at SOCKET."""
    return transfer.join(path, json_output)


def _version(value: bool) -> None:
    if value:
        print(f"rtransfer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def _completion(argv: list[str]) -> int | None:
    """``--show-completion SHELL`` / ``--install-completion SHELL``: typer's flags would detect the
    running shell and ignore the one named."""
    if len(argv) != 2 or argv[0] not in ("--show-completion", "--install-completion"):
        return None
    from typer._completion_shared import get_completion_script, install

    shell = argv[1]
    if shell not in SHELLS:
        raise UsageError(f"unknown shell {shell!r}: one of {', '.join(SHELLS)}")
    if argv[0] == "--show-completion":
        print(get_completion_script(prog_name="rtransfer", complete_var="_RTRANSFER_COMPLETE", shell=shell))
    else:
        installed, path = install(shell=shell, prog_name="rtransfer", complete_var="_RTRANSFER_COMPLETE")
        print(f"{installed} completion installed in {path}")
    return 0


def _usage_error(exc: click.exceptions.UsageError | typer.exceptions.TyperException) -> int:
    """The parser's errors: one line (or the help alone, when nothing was given), exit 2; with
    --json, the error event a script reads."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        print(exc.format_message(), file=sys.stderr)
        return EXIT_USAGE
    code = getattr(exc, "exit_code", EXIT_USAGE)
    message = exc.format_message()  # type: ignore[union-attr]
    if "--json" in sys.argv:
        return fail(make_reporter(True, False, data_on_stdout=False), UsageError(message))
    hint = " (see 'rtransfer --help')" if code == EXIT_USAGE else ""
    print(f"rtransfer: error: {message}{hint}", file=sys.stderr)
    return int(code)


def main() -> None:
    """Entry point: every outcome becomes one line on stderr and a documented exit code."""
    sys.exit(exit_code(_parsed_and_run))


def _parsed_and_run() -> object:
    try:
        completed = _completion(sys.argv[1:])
        if completed is not None:
            return completed
        return typer.main.get_command(app).main(prog_name="rtransfer", standalone_mode=False)
    except typer.Abort:
        print("rtransfer: error: interrupted by SIGINT", file=sys.stderr)
        return EXIT_SIGINT
    except (click.exceptions.UsageError, typer.exceptions.TyperException) as exc:
        return _usage_error(exc)
