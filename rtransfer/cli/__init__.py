"""The command line: the typer app and its commands (commands.py), the options as typed and checked
(options.py), turned into a config with the one way to the peer (configure.py), run under the event
loop with the signals (runner.py). ``rtransfer.cli:main`` is the console entry point (early.py: ssh
first, then the commands)."""

from rtransfer.cli.early import main

__all__ = ["main"]
