"""The asyncio layer: connect or listen, move bytes between sockets and machines, fire timers.

All protocol decisions are made by the machines in ``rtransfer.protocol``. Here,
``connection`` moves one connection's bytes, ``send`` and ``recv`` run a transfer
across connections (one attempt per connection), and ``outcome`` says what a
failure means to the user and whether to try again.

Nothing is imported here: a receiver doesn't load the sending side, nor a sender the receiving
side (the far side of ssh starts in the first byte's path).
"""
