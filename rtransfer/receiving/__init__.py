"""The receiving side's disk: a sink (sink.py) whose parts share one Landing (landing.py): what
each batch of the list becomes (plan.py), the partial files and their journals (write.py,
direct_io.py, journal.py), packs of small files (packs.py), the end of a transfer (finish.py:
links and devices, specials.py; --delete, delete.py), DEST reached one name at a time (dest.py),
standard output as a DEST (stdout.py), and the writer task (writer.py)."""
