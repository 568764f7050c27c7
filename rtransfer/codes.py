"""Codes people read aloud: made up, split into what a relay may learn and what it may not, and
read back whatever case they were typed in. Only the standard library: a receiver shows its code
before the heavy imports."""

from __future__ import annotations

import secrets

CODE_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32: no i, l, o, u


def new_code(groups: int = 3, group_len: int = 4) -> str:
    """A code like ``7hk2-m9xq-3wfe`` (60 bits): easy to read aloud, impossible to guess in one try."""
    return "-".join("".join(secrets.choice(CODE_ALPHABET) for _ in range(group_len)) for _ in range(groups))


def nameplate(code: str) -> str | None:
    """Through a relay, a code as ``new_code`` makes them is a nameplate (all but its last group,
    40 bits: what the relay may learn, so that two transfers there practically never meet) and a
    secret (its last group, 20 bits, never sent). A code of any other shape is all secret."""
    groups = code.strip().lower().split("-")
    shaped = len(groups) == 3 and all(len(g) == 4 and set(g) <= set(CODE_ALPHABET) for g in groups)
    return "-".join(groups[:-1]) if shaped else None


def normalise_code(code: str) -> bytes:
    """Codes are typed by people: ignore case and surrounding space."""
    return code.strip().lower().encode("utf-8")
