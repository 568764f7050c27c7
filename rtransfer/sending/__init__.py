"""The sending side's files: the walk that lists them (walk.py), the reader that cuts them into
chunks and packs (reader.py, packs.py), and the rate it may send at (ratelimit.py)."""
