"""TCP hole punching: both sides dial each other's mapped address from the port the mapping is
of, at the same moment, so that each NAT has seen its own side's SYN go out when the other's
arrives, and lets it in (a simultaneous open; RFC 5128 §3.4, libp2p's DCUtR).

A NAT that drops unsolicited SYNs forgives some skew: the SYN that arrived too early is gone,
and the later one from the other side meets a socket still dialing. One that answers them with
RST kills the early try: the dial is made again at once, a bounded number of times, until the
two SYNs cross: the first BURST tries back to back, then one each PACE_S to the end of the
window, so that a peer whose moment came late (a busy event loop, a round trip misjudged)
still finds this side dialing. A SYN that a NAT drops as matching none of its states (the
4-tuple's last try left one behind) would wait for the kernel's retry, a second later: it is
dialed again after a few round trips (``syn_wait``) instead. Each side also listens on its
punching port, for a SYN that arrives between two of its own tries. A NAT that maps each
connection to a port of its own (a "symmetric" NAT) can't be punched: STUN from the same port
to two servers shows it (``RandomMapping``).
"""

from __future__ import annotations

import asyncio
import errno
import socket

from rtransfer.transport.stun import StunError, ask, reusable_socket

PUNCH_WINDOW_S = 2.0  # from the moment to dial; a NAT that lets nothing through is given up on then
MAX_PUNCH_TRIES = 2500  # dials in one window: an RST answered at once costs a round trip each
BURST = 50  # tries back to back, where the two SYNs are most likely to cross
PACE_S = 0.001  # then one try per this much, at most
SYN_WAIT_S = 0.25  # a SYN neither refused nor answered by then is dialed again, where no round trip is known
SYN_WAIT_MIN_S = 0.1  # however short the round trip: the two sides' moments differ by the loops' jitter
_IN_USE_PAUSE_S = 0.005  # the port's connection to the peer exists (accepted): wait for it to be proved


def syn_wait(rtt_s: float | None) -> float:
    """How long an unanswered SYN is waited for: four round trips over the relay (which is longer
    than the direct one), within SYN_WAIT_MIN_S and SYN_WAIT_S. Not less: behind a router that
    drops, the SYN is unanswered until the peer's crosses it, and a redial in between (a new
    initial sequence number on the NAT's entry) spoils the crossing."""
    return SYN_WAIT_S if rtt_s is None else min(max(4 * rtt_s, SYN_WAIT_MIN_S), SYN_WAIT_S)


class RandomMapping(StunError):
    """The NAT maps this port to another public port for each destination: punching can't work."""


class PunchPort:
    """One port of this side's to punch from: listened on from the start, and where the NAT maps
    it, as STUN saw it (``mapped``)."""

    def __init__(self, host: str = "0.0.0.0") -> None:
        self.listener: socket.socket | None = reusable_socket(host, 0)
        self.listener.listen(4)
        self.local: tuple[str, int] = self.listener.getsockname()[:2]
        self.mapped: tuple[str, int] | None = None

    async def learn(self, servers: tuple[tuple[str, int], ...]) -> tuple[str, int]:
        """The mapping, asked of the first server; of the second too, where there is one, from the
        same port, at once: a different answer means the NAT maps at random."""
        mapped, *others = await asyncio.gather(*(ask(server, self.local) for server in servers))
        for again in others:
            if again[1] != mapped[1]:
                raise RandomMapping(errno.EPROTO, f"the NAT maps randomly ({mapped[1]}, then {again[1]})")
        self.mapped = mapped
        return mapped

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None


async def punch(
    local: tuple[str, int], remote: tuple[str, int], deadline: float, wait_s: float = SYN_WAIT_S
) -> socket.socket:
    """Dial ``remote`` from ``local`` until a connection opens, each refused try made again at
    once, until ``deadline`` (the loop's time) or MAX_PUNCH_TRIES; TimeoutError then."""
    loop = asyncio.get_running_loop()
    for tries in range(MAX_PUNCH_TRIES):
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        sock = reusable_socket(*local)
        try:
            async with asyncio.timeout(min(remaining, wait_s)):
                await loop.sock_connect(sock, remote)
            return sock
        except TimeoutError:
            sock.close()  # unanswered: dial again rather than wait for the kernel's SYN retry (1 s)
        except (ConnectionRefusedError, ConnectionResetError):
            sock.close()
            await asyncio.sleep(0 if tries < BURST else PACE_S)
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EHOSTUNREACH, errno.ENETUNREACH):
                raise
            await asyncio.sleep(_IN_USE_PAUSE_S)
        except BaseException:
            sock.close()
            raise
    raise TimeoutError(errno.ETIMEDOUT, "time ran out")
