"""A send or a recv from its options to its exit, whoever parsed them: typer (commands.py), or
far.py for the far side of ssh, which starts without typer. Every outcome is one line on stderr
and a documented exit code."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from msgspec.structs import replace

from rtransfer.cli.options import RELAY_ENV, RecvOptions, SendOptions, choose_relay
from rtransfer.errors import EXIT_FAILURE, RtransferError, UsageError

if TYPE_CHECKING:
    from rtransfer.report import Reporter


def make_reporter(json_output: bool, quiet: bool, data_on_stdout: bool, verbose: bool = False) -> Reporter:
    from rtransfer.report import ConsoleReporter, JsonReporter

    if json_output:
        return JsonReporter((sys.stderr if data_on_stdout else sys.stdout).fileno())
    return ConsoleReporter(quiet=quiet, verbose=verbose)


def fail(reporter: Reporter, error: RtransferError) -> int:
    reporter.error(error)
    reporter.close(timeout_s=None)
    return error.exit_code


def send(options: SendOptions, reporter: Reporter) -> int:
    """A push over ssh starts ssh first (cli/early.py did, from the arguments, unless they weren't
    plain): its connection and the far side's start-up overlap the heavy imports here."""
    from rtransfer.transport.ssh_launch import start_early, stop_early

    try:
        from rtransfer.cli.options import push_command

        start_early(push_command(options))
        from rtransfer.cli.configure import send_config

        config = send_config(options, reporter)
    except RtransferError as exc:
        stop_early()
        return fail(reporter, exc)
    if options.no_encrypt and not config.way.authenticated:
        reporter.warning("--no-encrypt: file contents travel in clear; only the handshake is authenticated")
    from rtransfer.cli.runner import run
    from rtransfer.session.send import run_send

    run(run_send(config, reporter), reporter, over_stdio=options.stdio)


def recv(options: RecvOptions, reporter: Reporter) -> int:
    """Listening is announced before the heavy imports: a sender may connect meanwhile."""
    named = bool(options.listen or options.connect or options.pull or options.stdio)  # another way to the peer
    options = replace(options, relay=choose_relay(options.relay, os.environ.get(RELAY_ENV), other_way=named))
    from rtransfer.cli.listen import open_listener, record_signals
    from rtransfer.cli.options import recv_listen
    from rtransfer.codes import new_code

    try:
        host, port = recv_listen(options)
        if options.no_encrypt:
            reporter.warning("--no-encrypt: file contents travel in clear; only the handshake is authenticated")
        record_signals()
        elsewhere = options.connect is not None or options.relay is not None or options.pull or options.stdio
        listener = None if elsewhere else open_listener(host, port)
        from rtransfer.cli.options import pull_command
        from rtransfer.transport.ssh_launch import start_early

        start_early(pull_command(options))  # a pull's ssh first, as a push starts it (send)
    except RtransferError as exc:
        return fail(reporter, exc)
    code = options.code or options.secret or new_code()
    shown = None if options.secret is not None or options.code is not None else code
    if listener is not None:
        bound_host, bound_port = listener.getsockname()[:2]
        reporter.listening(bound_host, bound_port, shown)
    elif options.relay is not None:
        reporter.listening(host, port, shown, relay=True)
    from rtransfer.cli.configure import recv_config
    from rtransfer.cli.runner import run
    from rtransfer.session.recv import run_recv

    try:
        config = recv_config(options, host, port, code, listener, reporter)
    except RtransferError as exc:
        from rtransfer.transport.ssh_launch import stop_early

        stop_early()
        return fail(reporter, exc)
    run(run_recv(config, reporter), reporter, over_stdio=options.stdio)


def join(path: str, json_output: bool) -> int:
    """A further ssh session's far side (--streams): it joins the transfer running at ``path``."""
    from rtransfer.transport.stdio_link import join as join_transfer

    gc.enable()  # off for start-up (early.py); this runs as long as the transfer, without runner.run
    try:
        join_transfer(path)
    except RtransferError as exc:
        return fail(make_reporter(json_output, False, data_on_stdout=True), exc)
    return 0


def exit_code(command: Callable[[], object]) -> int:
    """``command``'s exit code: a usage error it raises is one line and exit 2, anything else a
    bug, said in one line too (RTRANSFER_DEBUG=1 shows the traceback)."""
    try:
        rv = command()
    except UsageError as exc:
        print(f"rtransfer: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if os.environ.get("RTRANSFER_DEBUG"):
            raise
        print(f"rtransfer: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return rv if isinstance(rv, int) else 0
