"""Where a side's NAT maps a port: a STUN Binding request (RFC 8489) over TCP, sent from the
very port the side will punch from, so the answer is that port's mapping.

The messages are aioice's (a kept STUN implementation, imported only when --stun is given);
this module only frames them over TCP and checks the answer. A STUN server is not trusted with
anything: it learns that this side asked, and an answer that lies only makes the punch fail.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import socket
import struct
import sys
import types
from typing import Any

from rtransfer.transport.source import recv_exact

STUN_TIMEOUT_S = 2.0
_HEADER = struct.Struct("!HHI12s")  # type, body length, magic cookie, transaction id
_MAX_ANSWER_BYTES = 1024  # a Binding response holds a few addresses; anything longer is not one


class StunError(OSError):
    """No usable answer from a STUN server (refused, silent, or not STUN)."""


def reusable_socket(host: str, port: int) -> socket.socket:
    """A TCP socket on HOST:PORT that other sockets of this side may share (SO_REUSEPORT): the
    punching port is listened on, asked about and dialed from, all at once."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _stun() -> Any:
    """aioice's STUN messages. Its package's ``__init__`` imports all of ICE (DNS, mDNS: some
    70 ms of CPU, which held up the first try); this process uses none of it, so where nothing
    imported aioice yet, its ``stun`` module is loaded on its own, from the package's folder
    (about 1 ms)."""
    if "aioice" not in sys.modules:
        spec = importlib.util.find_spec("aioice")
        if spec is None or spec.submodule_search_locations is None:
            raise StunError(errno.ENOENT, "aioice is not installed")
        package = types.ModuleType("aioice")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["aioice"] = package
    return importlib.import_module("aioice.stun")


def binding_request() -> tuple[bytes, bytes]:
    """A Binding request's bytes, and its transaction id."""
    stun = _stun()
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    return bytes(message), message.transaction_id


def mapped_from(answer: bytes, transaction_id: bytes) -> tuple[str, int]:
    """The mapped address in a Binding response to ``transaction_id``; StunError for anything else."""
    stun = _stun()
    try:
        message = stun.parse_message(answer)
    except Exception as exc:  # a hostile answer may break the parser any way it likes
        raise StunError(errno.EPROTO, f"the STUN server's answer is malformed ({exc})") from None
    if message.transaction_id != transaction_id or message.message_method != stun.Method.BINDING:
        raise StunError(errno.EPROTO, "the STUN server answered another request")
    if message.message_class == stun.Class.ERROR:
        raise StunError(errno.EPROTO, f"the STUN server refused the request ({message.error_code})")
    if message.message_class != stun.Class.RESPONSE:
        raise StunError(errno.EPROTO, "the STUN server gave no Binding response")
    mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get("MAPPED-ADDRESS")
    if not (isinstance(mapped, tuple) and len(mapped) == 2 and 0 < mapped[1] < 65536):
        raise StunError(errno.EPROTO, "the STUN server's answer names no address")
    return str(mapped[0]), int(mapped[1])


async def ask(server: tuple[str, int], local: tuple[str, int], timeout_s: float = STUN_TIMEOUT_S) -> tuple[str, int]:
    """Where the NAT maps ``local`` (a shared port, see reusable_socket) towards ``server``."""
    request, transaction_id = binding_request()
    sock = reusable_socket(*local)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            found = await loop.getaddrinfo(*server, family=socket.AF_INET, type=socket.SOCK_STREAM)
            await loop.sock_connect(sock, found[0][4])
            await loop.sock_sendall(sock, request)
            header = await recv_exact(sock, _HEADER.size)
            length = _HEADER.unpack(header)[1]
            if length > _MAX_ANSWER_BYTES:
                raise StunError(errno.EPROTO, f"the STUN server's answer is too long ({length} bytes)")
            return mapped_from(header + await recv_exact(sock, length), transaction_id)
    except TimeoutError:
        raise StunError(errno.ETIMEDOUT, f"no answer within {timeout_s:g} s") from None
    except StunError:
        raise
    except (OSError, socket.gaierror) as exc:
        raise StunError(exc.errno or errno.EIO, exc.strerror or str(exc)) from None
    finally:
        sock.close()
