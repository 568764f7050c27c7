"""A real lossy link between two network namespaces, for the loss test and the bench.

``lossy_link``: veth between namespaces A and B; in each, nftables drops LOSS% of incoming TCP
packets (counting them) and tc's token bucket caps the rate. ``delayed_link``: the same loss
and cap, plus a delay each way, through a TUN device in each namespace and a relay between
them (tests/chaos/tunlink.py), for kernels without netem. Addresses are link-local.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ADDRESSES = ("169.254.77.1", "169.254.77.2")


class Unavailable(Exception):
    """This machine cannot build namespaces (not root, or no ip/nft/tc)."""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@contextlib.contextmanager
def namespaces() -> Iterator[tuple[str, str, str]]:
    """Two new network namespaces (and a tag for names in them); removed again on exit."""
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "nft", "tc")):
        raise Unavailable("needs root with ip, nft and tc to build network namespaces")
    tag = f"rt{os.getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
    except subprocess.CalledProcessError as exc:
        raise Unavailable(f"cannot create network namespaces here: {exc.stderr.decode().strip()}") from None
    try:
        yield a, b, tag
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


DELAYED_ADDRESSES = ("169.254.78.1", "169.254.78.2")


@contextlib.contextmanager
def delayed_link(
    delay_ms: float, rate: str = "200mbit", loss_percent: float = 2, report: dict[str, int] | None = None
) -> Iterator[tuple[str, str, str]]:
    """(sender namespace, receiver namespace, receiver address) joined by tunlink's relay: ``delay_ms``
    each way, ``loss_percent`` of packets dropped each way, ``rate`` each way. On exit, ``report``
    gets the relay's counts ("dropped", "forwarded")."""
    with namespaces() as (a, b, _):
        for ns, (mine, peer) in ((a, DELAYED_ADDRESSES), (b, DELAYED_ADDRESSES[::-1])):
            sh("ip", "-n", ns, "tuntap", "add", "dev", "rt0", "mode", "tun")
            sh("ip", "-n", ns, "addr", "add", mine, "peer", peer, "dev", "rt0")
            sh("ip", "-n", ns, "link", "set", "rt0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        args = ["--a", a, "--b", b, "--delay-ms", str(delay_ms), "--loss", str(loss_percent), "--rate", rate]
        relay = subprocess.Popen(
            in_ns(a, sys.executable, "-m", "tests.chaos.tunlink", *args),
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            assert relay.stdout is not None
            if b"ready" not in relay.stdout.readline():
                raise Unavailable("the TUN relay did not start")
            yield a, b, DELAYED_ADDRESSES[1]
        finally:
            relay.terminate()
            out, _ = relay.communicate(timeout=10)
            if report is not None and out:
                report.update({k: v for k, v in json.loads(out.splitlines()[-1]).items() if k != "event"})


@contextlib.contextmanager
def lossy_link(rate: str = "200mbit", loss_percent: int = 2) -> Iterator[tuple[str, str, str]]:
    """(sender namespace, receiver namespace, receiver address); removed again on exit."""
    with namespaces() as (a, b, tag):
        sh("ip", "link", "add", f"{tag}va", "netns", a, "type", "veth", "peer", "name", f"{tag}vb", "netns", b)
        for ns, dev, addr in ((a, f"{tag}va", ADDRESSES[0]), (b, f"{tag}vb", ADDRESSES[1])):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh(*in_ns(ns, "nft", "add table inet chaos"))
            sh(*in_ns(ns, "nft", "add chain inet chaos input { type filter hook input priority 0 ; }"))
            rule = f"add rule inet chaos input meta l4proto tcp numgen random mod 100 < {loss_percent} counter drop"
            sh(*in_ns(ns, "nft", rule))
            tbf = ("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms")
            sh(*in_ns(ns, *tbf))
        yield a, b, ADDRESSES[1]


def dropped_packets(ns: str) -> int:
    """What the loss rule dropped on the way into ``ns``."""
    listing = subprocess.run(
        in_ns(ns, "nft", "list", "chain", "inet", "chaos", "input"), capture_output=True, text=True
    )
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing.stdout))
