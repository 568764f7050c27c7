"""Command line: parse -> build a config -> run -> map the outcome to an exit code.

Heavy modules (asyncio driver, hashing, rich) are imported inside the commands
so that ``rtransfer --help`` starts fast. For the same reason this module does not
postpone its annotations: typer would evaluate every option's annotation string
on each start, which cost more than importing the types up front.
"""

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import typer.exceptions
import typer.main

from rtransfer import __version__
from rtransfer.errors import (
    EXIT_FAILURE,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    Interrupted,
    RtransferError,
    UsageError,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from rtransfer.report import Reporter
    from rtransfer.stats import TransferStats

DEFAULT_PORT = 7373
SIGNAL_FLUSH_S = 1.0  # after SIGINT/SIGTERM, how long unread events may delay the exit

app = typer.Typer(
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Send files over TCP with sequence numbers, ACKs, resends and end-to-end integrity checks.",
)

_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)


DEFAULT_STREAMS = 1


def stream_chunk_bytes(streams: int) -> int:
    """8 MiB chunks on one connection, smaller on more, two in flight on each: 16 MiB in flight in
    all whatever their number, so the receiver's buffers stay in budget. (Larger chunks on a few
    streams measured no faster on loopback, for more memory.)"""
    return max(256 << 10, (8 << 20) // streams)


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
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"invalid port in {text!r}: expected a number from 0 to 65535")
    return host, int(port_text)


def _reporter(json_output: bool, quiet: bool, data_on_stdout: bool, verbose: bool = False) -> "Reporter":
    from rtransfer.report import ConsoleReporter, JsonReporter

    if json_output:
        return JsonReporter((sys.stderr if data_on_stdout else sys.stdout).fileno())
    return ConsoleReporter(quiet=quiet, verbose=verbose)


_early_signals: list[Interrupted] = []


def _record_signals() -> None:
    """Until the event loop takes the signals over (in ``_run``), remember one instead of dying mid-import:
    a script that stops a receiver as soon as it listens still gets the error event and exit code."""
    import signal

    def record(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        _early_signals.append(Interrupted(name, EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM))

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, record)


def _run(work: "Awaitable[TransferStats]", reporter: "Reporter") -> NoReturn:
    import asyncio
    import gc
    import signal

    async def guarded() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        caught: list[Interrupted] = []

        def on_signal(name: str, code: int) -> None:
            if not caught:
                caught.append(Interrupted(name, code))
                task.cancel()

        for sig, code in ((signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)):
            loop.add_signal_handler(sig, on_signal, sig.name, code)
        if _early_signals:  # one came while the receiver was starting, after it said it listens
            work.close()  # type: ignore[attr-defined]
            reporter.error(_early_signals[0])
            return _early_signals[0].exit_code
        try:
            stats = await work
        except (asyncio.CancelledError, RtransferError) as exc:
            error = caught[0] if caught else exc
            if not isinstance(error, RtransferError):
                raise
            reporter.error(error)
            return error.exit_code
        reporter.done(stats)
        return 0

    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    # Startup objects (typer, rich, the imports) live as long as the process; out of the
    # collector's sight, its sweeps during the transfer stay short.
    gc.freeze()
    runner = asyncio.Runner(loop_factory=loop_factory)
    code = runner.run(guarded())

    # The loop has stopped, and with it its signal handlers: a signal from here on exits at once.
    def exit_now(signum: int, _frame: object) -> None:
        os._exit(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, exit_now)
    # Events not yet read are waited for, however slow their reader; after a signal, briefly.
    reporter.close(timeout_s=SIGNAL_FLUSH_S if code in (EXIT_SIGINT, EXIT_SIGTERM) else None)
    # Cleanup ran inside the coroutine and every file is closed. Skip the interpreter's
    # teardown: freeing every module's objects only delays each side's exit,
    # and after a failure a worker thread may still be blocked on a pipe that never delivers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Newline-delimited JSON events on stdout (stderr if stdout carries data).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="A line per file (digest and name), for trees too.")]
NoEncryptOpt = Annotated[
    bool,
    typer.Option(
        "--no-encrypt", help="Send file contents in clear (trusted networks only); the handshake stays authenticated."
    ),
]
SecretOpt = Annotated[
    str | None,
    typer.Option(
        "--secret", metavar="SECRET", envvar="RTRANSFER_SECRET", help="Shared secret instead of a code (for scripts)."
    ),
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", metavar="SECONDS", help="How long a silent peer is tolerated.")]


@app.command(no_args_is_help=True)
def send(
    sources: Annotated[
        list[str], typer.Argument(metavar="SOURCE", show_default=False, help="Files, directories, or '-' for stdin.")
    ],
    destination: Annotated[str, typer.Argument(metavar="HOST:PORT", show_default=False, help="The receiver.")],
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="Name the receiver stores standard input ('-') under.")
    ] = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    timeout: TimeoutOpt = 30.0,
    chunk_size: Annotated[
        str | None,
        typer.Option(
            "--chunk-size",
            metavar="SIZE",
            help="Bytes per chunk (K/M suffixes; default 8M, divided by --streams).",
            show_default=False,
        ),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(
            "--window",
            metavar="CHUNKS",
            help="Chunks in flight on each connection before an ACK (default 2).",
            show_default=False,
        ),
    ] = None,
    streams: Annotated[
        int, typer.Option("--streams", metavar="N", help="Connections to spread the transfer over.")
    ] = DEFAULT_STREAMS,
    code: Annotated[str | None, typer.Option("--code", metavar="CODE", help="The code the receiver shows.")] = None,
    secret: SecretOpt = None,
    no_encrypt: NoEncryptOpt = False,
    retries: Annotated[int, typer.Option("--retries", metavar="N", help="Retries in one outage.")] = 20,
    retry_max_seconds: Annotated[
        float, typer.Option("--retry-max-seconds", metavar="SECONDS", help="Give up retrying after this long.")
    ] = 60.0,
    safe_links: Annotated[
        bool,
        typer.Option(
            "--safe-links", help="Skip symbolic links that point outside the tree (sent as they are by default)."
        ),
    ] = False,
    limit_rate: Annotated[
        str | None,
        typer.Option(
            "--limit-rate",
            metavar="RATE",
            help="At most RATE bytes per second over the whole transfer (K/M/G suffixes, as curl's).",
        ),
    ] = None,
    compress: Annotated[
        bool,
        typer.Option("--compress", "-z", help="Compress chunks with zstd (those that shrink), as rsync -z."),
    ] = False,
    checksum: Annotated[
        bool,
        typer.Option(
            "--checksum", "-c", help="Skip files the receiver has by content (BLAKE3), not size and mtime; reads all."
        ),
    ] = False,
    whole_file: Annotated[
        bool,
        typer.Option(
            "--whole-file", "-W", help="Send changed files whole, never as a delta against the receiver's copy."
        ),
    ] = False,
) -> int:
    """Send files, directories or standard input ('-') to a receiver."""
    reporter = _reporter(json_output, quiet, data_on_stdout=False, verbose=verbose)
    try:
        from rtransfer.protocol.frames import MAX_CHUNK_BYTES, MAX_STREAMS, MAX_WINDOW, MIN_CHUNK_BYTES
        from rtransfer.retry import RetryPolicy
        from rtransfer.session import SendConfig, run_send

        host, port = parse_endpoint(destination, None)
        if not 1 <= streams <= MAX_STREAMS:
            raise UsageError(f"--streams must be between 1 and {MAX_STREAMS}")
        chunk_bytes = parse_size(chunk_size) if chunk_size is not None else stream_chunk_bytes(streams)
        if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise UsageError(f"--chunk-size must be between {MIN_CHUNK_BYTES} and {MAX_CHUNK_BYTES} bytes")
        window = window if window is not None else 2
        if not 1 <= window <= MAX_WINDOW:
            raise UsageError(f"--window must be between 1 and {MAX_WINDOW}")
        rate_bps = parse_size(limit_rate) if limit_rate is not None else None
        if rate_bps is not None:
            from rtransfer.ratelimit import chunk_under_limit

            if rate_bps < 1024:
                raise UsageError("--limit-rate must be at least 1K (bytes per second)")
            chunk_bytes = chunk_under_limit(chunk_bytes, rate_bps, MIN_CHUNK_BYTES)
        if not timeout > 0:
            raise UsageError("--timeout must be positive")
        if retries < 0 or retry_max_seconds < 0:
            raise UsageError("--retries and --retry-max-seconds must not be negative")
        policy = RetryPolicy.for_retries(retries, retry_max_seconds)
        if code is None and secret is None:
            raise UsageError("pass the code the receiver shows with --code (or a shared --secret)")
        key = code if code is not None else secret
        assert key is not None
        if no_encrypt:
            reporter.warning("--no-encrypt: file contents travel in clear; only the handshake is authenticated")
        config = SendConfig(
            sources,
            host,
            port,
            name,
            chunk_bytes,
            window,
            timeout,
            policy,
            code=key,
            encrypt=not no_encrypt,
            safe_links=safe_links,
            limit_rate_bps=rate_bps,
            streams=streams,
            whole_file=whole_file,
            checksum=checksum,
            compress=compress,
        )
    except RtransferError as exc:
        reporter.error(exc)
        reporter.close(timeout_s=None)
        return exc.exit_code
    return _run(run_send(config, reporter), reporter)


@app.command(no_args_is_help=False)
def recv(
    dest: Annotated[str, typer.Argument(metavar="DEST", help="Directory to write into, or '-' for stdout.")] = ".",
    listen: Annotated[
        str, typer.Option("--listen", "-l", metavar="[HOST:]PORT", help="Address to listen on; port 0 picks one.")
    ] = f"0.0.0.0:{DEFAULT_PORT}",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    timeout: TimeoutOpt = 30.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files that already exist in DEST.")] = False,
    secret: SecretOpt = None,
    no_encrypt: NoEncryptOpt = False,
    max_bytes: Annotated[
        str, typer.Option("--max-bytes", metavar="SIZE", help="Refuse transfers declaring more (K/M/G/T suffixes).")
    ] = "1024T",
    max_files: Annotated[
        int, typer.Option("--max-files", metavar="N", help="Refuse transfers of more entries.")
    ] = 1_000_000,
    max_streams: Annotated[
        int, typer.Option("--max-streams", metavar="N", help="Refuse transfers asking for more connections.")
    ] = 16,
    wait_seconds: Annotated[
        float,
        typer.Option("--retry-max-seconds", metavar="SECONDS", help="How long a broken transfer waits for its sender."),
    ] = 60.0,
    buffered: Annotated[
        bool,
        typer.Option("--buffered", help="Write large files through the page cache instead of with direct I/O."),
    ] = False,
    safe_links: Annotated[
        bool,
        typer.Option("--safe-links", help="Refuse a transfer carrying a symbolic link that points outside DEST."),
    ] = False,
) -> int:
    """Listen, receive one transfer into DEST, and exit."""
    reporter = _reporter(json_output, quiet, data_on_stdout=dest == "-", verbose=verbose)
    try:
        from rtransfer.listen import check_dest, new_code, open_listener

        host, port = parse_endpoint(listen, "0.0.0.0")
        if not timeout > 0:
            raise UsageError("--timeout must be positive")
        if max_files < 1:
            raise UsageError("--max-files must be at least 1")
        if max_streams < 1:
            raise UsageError("--max-streams must be at least 1")
        max_total_bytes = parse_size(max_bytes)
        if no_encrypt:
            reporter.warning("--no-encrypt: file contents travel in clear; only the handshake is authenticated")
        if dest != "-":
            check_dest(Path(dest))
        # Listening is announced before the heavy imports below: a sender may connect meanwhile.
        _record_signals()
        listener = open_listener(host, port)
        code = secret if secret is not None else new_code()
        bound_host, bound_port = listener.getsockname()[:2]
        reporter.listening(bound_host, bound_port, None if secret is not None else code)

        from rtransfer.protocol.receiver import ReceiveLimits
        from rtransfer.session import RecvConfig, run_recv

        config = RecvConfig(
            dest,
            host,
            port,
            timeout,
            overwrite,
            ReceiveLimits(max_entries=max_files, max_total_bytes=max_total_bytes, max_streams=max_streams),
            code=code,
            encrypt=not no_encrypt,
            wait_s=wait_seconds,
            direct_io=not buffered,
            safe_links=safe_links,
            listener=listener,
        )
    except RtransferError as exc:
        reporter.error(exc)
        reporter.close(timeout_s=None)
        return exc.exit_code
    return _run(run_recv(config, reporter), reporter)


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


def main() -> None:
    """Entry point: every outcome becomes one line on stderr and a documented exit code."""
    try:
        rv = typer.main.get_command(app).main(prog_name="rtransfer", standalone_mode=False)
    except typer.Abort:
        print("rtransfer: error: interrupted by SIGINT", file=sys.stderr)
        sys.exit(EXIT_SIGINT)
    except typer.exceptions.TyperException as exc:  # the CLI parser's errors: usage errors exit 2
        code = getattr(exc, "exit_code", EXIT_USAGE)
        hint = " (see 'rtransfer --help')" if code == EXIT_USAGE else ""
        print(f"rtransfer: error: {exc.format_message()}{hint}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(code)
    except Exception as exc:  # a bug: say so in one line; RTRANSFER_DEBUG=1 shows the traceback
        if os.environ.get("RTRANSFER_DEBUG"):
            raise
        print(f"rtransfer: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    sys.exit(rv if isinstance(rv, int) else 0)
