"""Where connections come from: one interface, ``Way`` ("a connected byte stream for
this transfer"), with a source per way of reaching the peer (``source.py``: dial, listen;
``relay.py``: meet at a transit relay; ``direct.py``: a direct path found through it; ``ssh.py``
and ``stdio_link.py``: the two ends of an ssh session), the one reconnect loop above them
(``reconnect.py``) and the one retry policy it follows (``retry.py``). cli/configure.py makes the
source from the options; the session is given it and never asks which one it has.

A new way to reach a machine is one new Way here, a branch in cli/configure.py that
makes it, and the option that asks for it.

Nothing is imported here: a module of the package costs only its own imports (ssh.py's, say,
before the rest of the command's start-up, see cli/commands.py).
"""
