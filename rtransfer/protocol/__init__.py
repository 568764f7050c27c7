"""The pure protocol: frame codec and sender/receiver state machines.

Nothing in this package touches sockets, files or clocks; time is passed in.
"""
