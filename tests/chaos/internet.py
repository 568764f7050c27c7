"""A small internet in network namespaces: two homes, each behind its own masquerading router,
a public host, and the magic-wormhole transit relay in the middle, for the relay tests and the
bench. Addresses are from the documentation ranges, inside namespaces made here.

    wan      bridge 198.51.100.0/24; the relay at 198.51.100.1 (its port behind a recording
             proxy, tests/chaos/proxy.py, which counts and keeps what reaches the relay)
    home A   host 10.1.0.2 -> router 10.1.0.1 | 198.51.100.2 (nft masquerade, no way in)
    home B   host 10.2.0.2 -> router 10.2.0.1 | 198.51.100.3
    public   host 198.51.100.4, reachable by anyone
    STUN     coturn (--stun-only) on the wan at 198.51.100.1 and 198.51.100.5, port 3478

Each router is of one of three kinds (``Internet.router``), as home routers are: one that
answers an unsolicited SYN with RST (no input filter: Linux's own answer), one that drops it
(an input chain with policy drop), and one that maps every connection to a random port
(``masquerade random,fully-random``: a "symmetric" NAT, which can't be punched). ``cut``
drops everything between the two homes, ``forward`` opens a port to home B's host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.netns import Unavailable, in_ns, sh

RELAY_ADDR = "198.51.100.1"
RELAY_PORT = 4001  # the proxy, which clients dial
RELAY_BACKEND_PORT = 4002  # the relay itself, on the wan namespace's loopback
PUBLIC_ADDR = "198.51.100.4"
STUN_ADDRS = (RELAY_ADDR, "198.51.100.5")  # one coturn, listening on two addresses
STUN_PORT = 3478
ROUTER_WAN = {"a": "198.51.100.2", "b": "198.51.100.3"}
HOST = {"a": "10.1.0.2", "b": "10.2.0.2"}
KINDS = ("rst", "drop", "random")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Internet:
    tag: str
    home_a: str
    home_b: str
    public: str
    wan: str
    routers: dict[str, str] = field(default_factory=dict)  # "a", "b": the router's namespace
    relay: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    stun: subprocess.Popen[bytes] | None = None
    namespaces: list[str] = field(default_factory=list)

    @property
    def stun_args(self) -> list[str]:
        """Both STUN addresses, as the sides are given them (--stun twice)."""
        return [arg for addr in STUN_ADDRS for arg in ("--stun", f"{addr}:{STUN_PORT}")]

    def start_stun(self) -> None:
        """coturn, as a STUN server only, on both its wan addresses; returns once it answers."""
        if self.stun is not None and self.stun.poll() is None:
            return
        turnserver = shutil.which("turnserver")
        if turnserver is None:
            raise Unavailable("needs coturn's turnserver (Debian's coturn)")
        listen = [arg for addr in STUN_ADDRS for arg in ("--listening-ip", addr)]
        args = ["-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls", "--no-udp", "--simple-log"]
        self.stun = subprocess.Popen(
            in_ns(self.wan, turnserver, *args, *listen, "--listening-port", str(STUN_PORT), "--log-file", "stdout"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for addr in STUN_ADDRS:
            self._wait_port(addr, STUN_PORT, self.stun, "coturn")

    def _wait_port(self, addr: str, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # bounded: until the port answers
            probe = subprocess.run(in_ns(self.wan, *_PROBE, addr, str(port)), capture_output=True)
            if probe.returncode == 0:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise Unavailable(f"{what} did not start")

    def router(self, side: str, kind: str) -> None:
        """Make home ``side``'s router one of KINDS (its rules replaced; connections through it
        forgotten)."""
        _router_rules(self.routers[side], f"{self.tag}l{1 if side == 'a' else 2}", kind)

    def cut(self, on: bool) -> None:
        """Drop (or stop dropping) everything between the two homes, at home A's router: a path
        that isn't there yet, or one that breaks."""
        ns = self.routers["a"]
        subprocess.run(in_ns(ns, "nft", "delete", "table", "inet", "cut"), capture_output=True, timeout=30)
        if on:
            other = ROUTER_WAN["b"]
            rules = f"""
table inet cut {{
  chain pre {{ type filter hook prerouting priority -300; ip saddr {other} drop; }}
  chain post {{ type filter hook postrouting priority 300; ip daddr {other} drop; }}
}}
"""
            _nft(ns, rules)

    def forward(self, port: int) -> None:
        """A port forward on home B's router: its wan address's ``port`` reaches home B's host (made
        again after ``router``, which replaces the filter it opens)."""
        router = self.routers["b"]
        subprocess.run(in_ns(router, "nft", "delete", "table", "ip", "portfwd"), capture_output=True, timeout=30)
        rules = f"""
table ip portfwd {{
  chain pre {{
    type nat hook prerouting priority -100; policy accept;
    iifname "wan0" tcp dport {port} dnat to {HOST["b"]}:{port}
  }}
}}
"""
        _nft(router, rules)
        sh(*in_ns(router, "nft", "insert", "rule", "inet", "guard", "through", "ip", "daddr", HOST["b"], "tcp", "dport",
                  str(port), "accept"))  # fmt: skip

    @property
    def relay_address(self) -> str:
        """The relay behind its recording proxy (start_proxy)."""
        return f"{RELAY_ADDR}:{RELAY_PORT}"

    @property
    def bare_relay_address(self) -> str:
        """The relay itself, with no proxy in the way (for the bench's timings)."""
        return f"{RELAY_ADDR}:{RELAY_BACKEND_PORT}"

    def start_relay(self) -> None:
        """The transit relay, as its operator runs it; returns once it accepts connections."""
        self.relay = subprocess.Popen(
            in_ns(self.wan, shutil.which("twist") or "twist", "transitrelay", f"--port=tcp:{RELAY_BACKEND_PORT}"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # bounded: until the relay's port answers
            probe = subprocess.run(in_ns(self.wan, *_PROBE, "127.0.0.1", str(RELAY_BACKEND_PORT)), capture_output=True)
            if probe.returncode == 0:
                return
            if self.relay.poll() is not None:
                break
            time.sleep(0.1)
        raise Unavailable("the transit relay did not start")

    def kill_relay(self) -> None:
        assert self.relay is not None
        self.relay.send_signal(signal.SIGKILL)
        self.relay.wait(timeout=10)

    def start_proxy(self, record: Path | None = None) -> None:
        args = ["--target", f"127.0.0.1:{RELAY_BACKEND_PORT}", "--listen-port", str(RELAY_PORT), "--bind", RELAY_ADDR]
        if record is not None:
            args += ["--record", str(record)]
        self.proxy = subprocess.Popen(
            in_ns(self.wan, sys.executable, "-m", "tests.chaos.proxy", *args), stdout=subprocess.PIPE, cwd=REPO
        )
        assert self.proxy.stdout is not None
        if b"listening" not in self.proxy.stdout.readline():
            raise Unavailable("the relay's proxy did not start")

    def stop_proxy(self) -> tuple[int, int]:
        """Stop the proxy: the bytes it carried into the relay (each side's, for the other) and
        the connections it served, over its whole life."""
        assert self.proxy is not None
        self.proxy.terminate()
        out, _ = self.proxy.communicate(timeout=10)
        events = [json.loads(line) for line in out.decode().splitlines()]
        closed = [e for e in events if e.get("event") == "closed"]
        return sum(int(e["up_bytes"]) for e in closed), len(closed)

    def stop(self) -> None:
        for proc in (self.proxy, self.relay, self.stun):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


# A connect probe that needs nothing but this Python.
_PROBE = [sys.executable, "-c", "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"]


def _link(ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
    sh("ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)


def _home(net: Internet, host: str, router: str, n: int) -> None:
    """A host behind a router that masquerades its LAN on the wan and lets nothing in."""
    lan, wan_side = f"{net.tag}l{n}", f"{net.tag}w{n}"
    _link(host, "eth0", router, lan)
    _link(router, "wan0", net.wan, wan_side)
    sh("ip", "-n", net.wan, "link", "set", wan_side, "master", "br0", "up")
    sh("ip", "-n", host, "addr", "add", f"10.{n}.0.2/24", "dev", "eth0")
    sh("ip", "-n", host, "link", "set", "eth0", "up")
    sh("ip", "-n", host, "route", "add", "default", "via", f"10.{n}.0.1")
    sh("ip", "-n", router, "addr", "add", f"10.{n}.0.1/24", "dev", lan)
    sh("ip", "-n", router, "addr", "add", f"198.51.100.{n + 1}/24", "dev", "wan0")
    for dev in (lan, "wan0"):
        sh("ip", "-n", router, "link", "set", dev, "up")
    sh(*in_ns(router, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
    _router_rules(router, lan, "rst")


def _nft(ns: str, rules: str) -> None:
    subprocess.run(in_ns(ns, "nft", "-f", "-"), input=rules.encode(), check=True, capture_output=True, timeout=30)


def _router_rules(router: str, lan: str, kind: str) -> None:
    """A masquerading router of one of KINDS that lets in only what answers its LAN."""
    if kind not in KINDS:
        raise ValueError(kind)
    masquerade = "masquerade random,fully-random" if kind == "random" else "masquerade"
    into_router = ""
    if kind == "drop":
        into_router = f"""
  chain into {{
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iifname {{ "lo", "{lan}" }} accept
  }}"""
    for table in ("ip nat", "inet guard"):
        subprocess.run(in_ns(router, "nft", "delete", "table", *table.split()), capture_output=True, timeout=30)
    _nft(
        router,
        f"""
table ip nat {{
  chain post {{
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" {masquerade}
  }}
}}
table inet guard {{
  chain through {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "{lan}" accept
  }}{into_router}
}}
""",
    )


@contextlib.contextmanager
def small_internet() -> Iterator[Internet]:
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "nft")):
        raise Unavailable("needs root with ip and nft to build network namespaces")
    if shutil.which("twist") is None:
        raise Unavailable("needs the transit relay (pip install magic-wormhole-transit-relay)")
    tag = f"ri{os.getpid() % 100000}"
    names = [f"{tag}{part}" for part in ("wan", "ha", "ra", "hb", "rb", "pub")]
    net = Internet(tag, home_a=names[1], home_b=names[3], public=names[5], wan=names[0], namespaces=names)
    try:
        for ns in names:
            try:
                sh("ip", "netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                raise Unavailable(f"cannot create network namespaces here: {exc.stderr.decode().strip()}") from None
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", net.wan, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", net.wan, "addr", "add", f"{RELAY_ADDR}/24", "dev", "br0")
        sh("ip", "-n", net.wan, "link", "set", "br0", "up")
        _home(net, net.home_a, names[2], 1)
        _home(net, net.home_b, names[4], 2)
        net.routers = {"a": names[2], "b": names[4]}
        sh("ip", "-n", net.wan, "addr", "add", f"{STUN_ADDRS[1]}/24", "dev", "br0")
        _link(net.public, "eth0", net.wan, f"{tag}wp")
        sh("ip", "-n", net.wan, "link", "set", f"{tag}wp", "master", "br0", "up")
        sh("ip", "-n", net.public, "addr", "add", f"{PUBLIC_ADDR}/24", "dev", "eth0")
        sh("ip", "-n", net.public, "link", "set", "eth0", "up")
        yield net
    finally:
        net.stop()
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def reachable(ns: str, host: str, port: int) -> bool:
    """Whether a TCP connection from ``ns`` to host:port opens (for checking the NAT itself)."""
    code = f"import socket; socket.create_connection(({host!r}, {port}), 2)"
    return subprocess.run(in_ns(ns, sys.executable, "-c", code), capture_output=True, timeout=30).returncode == 0
