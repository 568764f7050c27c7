"""Where connections come from: one interface, "a connected byte stream for this transfer",
with a source per way of reaching the peer (``source.py``: dial, accept; ``relay.py``: meet
at a transit relay), and the one reconnect loop above them (``reconnect.py``). The session
never knows which source it has.

A new way to reach a machine (ssh) is one new class with ``open``, ``further`` and ``close``.
"""

from rtransfer.transport.reconnect import Moved, Outage, keep_connected
from rtransfer.transport.relay import Relay, code_token
from rtransfer.transport.source import Accept, ConnectionSource, Dial

__all__ = ["Accept", "ConnectionSource", "Dial", "Moved", "Outage", "Relay", "code_token", "keep_connected"]
