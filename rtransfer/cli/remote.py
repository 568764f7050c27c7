"""The command that runs the far side over ssh, from the options alone: cheap to make, so that
cli/commands.py starts ssh (transport/ssh.py ``start_early``) before the rest of its imports."""

from __future__ import annotations

import shlex

from rtransfer.cli.options import RecvOptions, SendOptions, check_ssh_host, flags_on, remote_path
from rtransfer.errors import UsageError
from rtransfer.transport.ssh import SshCommand


def ssh_command(
    options: SendOptions | RecvOptions, host: str, command: str, paths: list[str], flags: tuple[str, ...] = ()
) -> SshCommand:
    """What runs the far side: ``-e``'s words, HOST, and the remote program's ``command`` with
    ``flags`` and ``paths``."""
    rsh = tuple(shlex.split(options.rsh))
    if not rsh:
        raise UsageError("-e/--rsh is empty: give the ssh command, as rsync's -e")
    check_ssh_host(host)
    common = ("--stdio", "--json", "--timeout", f"{options.retry.timeout_s:g}")
    far = (options.remote_path, command, *common, *flags, "--", *paths)
    return SshCommand(rsh, host, far, (options.remote_path, "join", *common, "--"))


def push_command(options: SendOptions) -> SshCommand | None:
    """``send SOURCE... [USER@]HOST:DEST``: the receiver runs there, started over ssh."""
    push = not (options.listen is not None or options.relay is not None or options.stdio or len(options.arguments) < 2)
    remote = remote_path(options.arguments[-1]) if push else None
    if remote is None:
        refused = (("--overwrite",) if options.overwrite else ()) + options.keep.flags()
        if refused:
            raise UsageError(f"{refused[0]} on send is for a push over ssh (the receiver decides otherwise)")
        return None
    given = {
        "--overwrite": options.overwrite,
        "--delete": options.delete,
        "--delete-excluded": options.delete_excluded,
        "--dry-run": options.dry_run,
    }
    flags = flags_on(given) + options.keep.flags()
    return ssh_command(options, remote.host, "recv", [remote.path or "."], flags)


def pull_command(options: RecvOptions) -> SshCommand | None:
    """``recv [USER@]HOST:SOURCE... DEST``: the sender runs there, started over ssh."""
    if not options.pull:
        return None
    paths = [r.path or "." for r in options.pull]
    return ssh_command(options, options.pull[0].host, "send", paths, options.sender_flags)
