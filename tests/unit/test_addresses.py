"""Which argument is a TCP address, which a path over ssh, which a local file (rsync's rule)."""

from __future__ import annotations

import pytest

from rtransfer.cli.options import split_recv_arguments
from rtransfer.cli.remote import RemotePath, remote_path
from rtransfer.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host:9000", None),  # HOST:PORT, the TCP form
        ("host:./9000", RemotePath("host", "./9000")),
        ("host:", RemotePath("host", "")),  # the remote home
        ("user@host:/srv/x", RemotePath("user@host", "/srv/x")),
        ("./a:b", None),  # a slash before the colon: local
        ("dir/a:b", None),
        ("[::1]:9000", None),
        ("[::1]:dir", RemotePath("::1", "dir")),
        ("user@[::1]:dir", RemotePath("user@::1", "dir")),
        ("user@[::1]:22", None),
        ("host:9000/x", RemotePath("host", "9000/x")),
        ("plain", None),
        ("-", None),
        (":x", None),
        ("host:\u00b2", RemotePath("host", "\u00b2")),  # a port is ASCII digits; "²" is a name
    ],
)
def test_remote_when_a_colon_comes_before_any_slash(text: str, expected: RemotePath | None) -> None:
    assert remote_path(text) == expected


def test_recv_with_one_argument_receives_and_with_more_pulls() -> None:
    assert split_recv_arguments([]) == ([], ".")
    assert split_recv_arguments(["out"]) == ([], "out")
    assert split_recv_arguments(["h:a", "h:b", "out"]) == ([RemotePath("h", "a"), RemotePath("h", "b")], "out")
    for bad in (["h:9000", "d"], ["h:a"], ["h:a", "g:b", "d"], ["local", "d"], ["h:a", "g:b"]):
        with pytest.raises(UsageError):
            split_recv_arguments(bad)


@pytest.mark.parametrize("text", ["h:\u00b2", "h:\u0663", ":\u00b2"])
def test_a_port_of_other_digits_is_a_usage_error(text: str) -> None:
    """str.isdigit says yes to "²" and "٣"; int() refuses the first: an internal error, once."""
    from rtransfer.cli.options import parse_endpoint, stun_servers

    with pytest.raises(UsageError, match="invalid port"):
        parse_endpoint(text, "0.0.0.0")
    with pytest.raises(UsageError, match="--stun"):
        stun_servers((), text, True)
