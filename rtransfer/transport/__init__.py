"""Where connections come from: one interface, "a connected byte stream for this transfer",
with a source per way of reaching the peer (``source.py``: dial, accept; ``relay.py``: meet
at a transit relay; ``direct.py``: a direct path found through it; ``ssh.py`` and
``stdio_link.py``: the two ends of an ssh session), and the one reconnect loop above them
(``reconnect.py``). The session never knows which source it has.

A new way to reach a machine is one new class with ``open``, ``further`` and ``close``.
"""

from rtransfer.transport.reconnect import Moved, Outage, keep_connected
from rtransfer.transport.relay import Relay, code_token
from rtransfer.transport.source import Accept, ConnectionSource, Dial
from rtransfer.transport.ssh import Ssh
from rtransfer.transport.stdio_link import StdioLink

__all__ = [
    "Accept",
    "ConnectionSource",
    "Dial",
    "Moved",
    "Outage",
    "Relay",
    "Ssh",
    "StdioLink",
    "code_token",
    "keep_connected",
]
