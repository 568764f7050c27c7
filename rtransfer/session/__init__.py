"""The asyncio layer: connect or listen, move bytes between sockets and machines, fire timers.

All protocol decisions are made by the machines in ``rtransfer.protocol``. Here,
``connection`` moves one connection's bytes, ``send`` and ``recv`` run a transfer
across connections (one attempt per connection), and ``outcome`` says what a
failure means to the user and whether to try again.
"""

from rtransfer.session.config import RecvConfig, SendConfig
from rtransfer.session.recv import run_recv
from rtransfer.session.send import run_send

__all__ = ["RecvConfig", "SendConfig", "run_recv", "run_send"]
