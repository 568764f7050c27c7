"""Over ssh, against a private sshd on a loopback port (tests/sshd.py), with the working tree's
rtransfer as the remote program: push, pull, stdin and stdout, the far side killed -9, and the
failures ssh itself can have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, rtransfer_cmd
from tests.sshd import LoopbackSshd, Unavailable

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSshd]:
    try:
        server = LoopbackSshd(tmp_path_factory.mktemp("sshd"))
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.close()


def remote_program() -> str:
    """The working tree's rtransfer, named absolutely: the remote shell's PATH may not hold it."""
    return " ".join(rtransfer_cmd())


def ssh_args(sshd: LoopbackSshd) -> list[str]:
    return ["-e", sshd.rsh(), "--remote-path", remote_program()]


def run(*args: str, input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*rtransfer_cmd(), *args], input=input_bytes, capture_output=True, timeout=100)


def make_tree(root: Path) -> Path:
    tree = root / "tree"
    (tree / "empty").mkdir(parents=True)
    (tree / "d").mkdir()
    (tree / "d" / "big.bin").write_bytes(os.urandom(3 << 20))
    (tree / "d" / "exec.sh").write_text("#!/bin/sh\n")
    (tree / "d" / "exec.sh").chmod(0o751)
    (tree / "none").write_bytes(b"")
    (tree / "link").symlink_to("d/exec.sh")
    os.utime(tree / "d" / "big.bin", (1_600_000_000, 1_600_000_000))
    return tree


def differences(a: Path, b: Path) -> list[str]:
    """What rsync -a -n -i -c would change to make b like a (nothing, when identical)."""
    out = subprocess.run(["rsync", "-a", "-n", "-i", "-c", f"{a}/", f"{b}/"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_tree_goes_over_ssh_either_way_identical(tmp_path: Path, sshd: LoopbackSshd, direction: str) -> None:
    tree = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    if direction == "push":
        result = run("send", str(tree), f"root@127.0.0.1:{dest}", *ssh_args(sshd))
    else:
        result = run("recv", f"root@127.0.0.1:{tree}", str(dest), *ssh_args(sshd))
    assert result.returncode == 0, result.stderr.decode()
    assert differences(tree, dest / "tree") == []
    assert (dest / "tree" / "link").is_symlink() and (dest / "tree" / "empty").is_dir()


def test_standard_input_pushed_and_a_file_pulled_to_standard_output(tmp_path: Path, sshd: LoopbackSshd) -> None:
    data = os.urandom(1 << 20)
    pushed = run(
        "send", "-", f"root@127.0.0.1:{tmp_path / 'backup'}/", "--name", "s.bin", *ssh_args(sshd), input_bytes=data
    )
    assert pushed.returncode == 0, pushed.stderr.decode()
    assert (tmp_path / "backup" / "s.bin").read_bytes() == data
    pulled = run("recv", f"root@127.0.0.1:{tmp_path / 'backup' / 's.bin'}", "-", *ssh_args(sshd))
    assert pulled.returncode == 0 and pulled.stdout == data


def test_a_push_over_three_ssh_sessions_joins_them_into_one_transfer(tmp_path: Path, sshd: LoopbackSshd) -> None:
    before = set(Path(tempfile.gettempdir()).glob("rtransfer-*/join"))
    data = os.urandom(24 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    args = ["send", str(tmp_path / "f.bin"), f"root@127.0.0.1:{tmp_path / 'out'}/", "--streams", "3", "--json"]
    result = run(*args, "--limit-rate", "12M", *ssh_args(sshd))
    assert result.returncode == 0, result.stderr.decode()
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert max(len(e.get("streams", ())) for e in events) == 3
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert set(Path(tempfile.gettempdir()).glob("rtransfer-*/join")) <= before  # the far side removed its socket


def test_the_far_side_killed_mid_push_is_started_again_and_the_push_resumes(
    tmp_path: Path, sshd: LoopbackSshd, procs: list[Proc]
) -> None:
    size = 24 << 20
    (tmp_path / "f.bin").write_bytes(os.urandom(size))
    args = ["send", str(tmp_path / "f.bin"), f"root@127.0.0.1:{tmp_path / 'out'}/", "--limit-rate", "8M", "--json"]
    procs.append(tx := Proc([*args, *ssh_args(sshd)]))
    while int(tx.wait_event("progress")["bytes"]) < size // 4:
        pass  # bounded by wait_event's timeout: a progress event a second
    subprocess.run(["pkill", "-9", "-f", f"recv --stdio --json --timeout 30 -- {tmp_path / 'out'}/"], check=True)
    assert tx.finish() == 0
    done = tx.events("done")[0]
    assert done["reconnects"] >= 1 and done["wire_bytes_sent"] <= 1.5 * size
    assert (tmp_path / "out" / "f.bin").read_bytes() == (tmp_path / "f.bin").read_bytes()


def test_a_missing_remote_source_is_one_line_naming_it_and_nothing_is_written(
    tmp_path: Path, sshd: LoopbackSshd
) -> None:
    result = run("recv", f"root@127.0.0.1:{tmp_path / 'nope'}", str(tmp_path / "dest"), *ssh_args(sshd))
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 6 and len(lines) == 1 and f"{tmp_path / 'nope'}" in lines[0], lines
    assert "root@127.0.0.1" in lines[0] and not (tmp_path / "dest").exists()


def test_a_missing_remote_program_is_said_once_not_retried(tmp_path: Path, sshd: LoopbackSshd) -> None:
    (tmp_path / "f").write_bytes(b"x")
    result = run("send", str(tmp_path / "f"), "root@127.0.0.1:x", "-e", sshd.rsh(), "--remote-path", "/no/rtransfer")
    assert result.returncode == 5
    assert result.stderr.decode().strip() == (
        "rtransfer: error: /no/rtransfer not found on root@127.0.0.1: install it there or pass --remote-path"
    )


def test_refused_authentication_is_final(tmp_path: Path, sshd: LoopbackSshd) -> None:
    (tmp_path / "f").write_bytes(b"x")
    rsh = sshd.rsh().replace(str(sshd.key), "/dev/null")
    result = run("send", str(tmp_path / "f"), "root@127.0.0.1:x", "-e", rsh, "--remote-path", remote_program())
    assert result.returncode == 5 and "Permission denied" in result.stderr.decode()
    assert "reconnecting" not in result.stderr.decode()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["recv", "host:9000", "d"], "use --connect host:9000"),
        (["recv", "host:file"], "to pull it, say where it goes"),
        (["recv", "a:x", "b:y", "d"], "one host at a time"),
        (["recv", "a:x", "b:y"], "DEST 'b:y' is remote"),
    ],
)
def test_address_mistakes_are_clear_usage_errors(args: list[str], needle: str) -> None:
    result = run(*args)
    assert result.returncode == 2 and needle in result.stderr.decode()


def test_a_pull_gives_the_far_sender_its_options_and_a_push_its_receiver_overwrite(
    tmp_path: Path, sshd: LoopbackSshd
) -> None:
    """--compress and --checksum on a pull reach the far sender (the wire shrinks; a touched but
    unchanged file is skipped); --overwrite on a push lets a changed file be replaced there."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "log.txt").write_bytes(b"the same line, again and again\n" * 200_000)
    dest = tmp_path / "dest"
    first = run("recv", f"root@127.0.0.1:{src}", str(dest), "--compress", "--json", *ssh_args(sshd))
    assert first.returncode == 0, first.stderr.decode()
    done = [json.loads(line) for line in first.stdout.splitlines()][-1]
    assert done["wire_bytes_received"] < (src / "log.txt").stat().st_size // 10
    os.utime(src / "log.txt", (1_700_000_000, 1_700_000_000))  # same content, another mtime
    again = run("recv", f"root@127.0.0.1:{src}", str(dest), "--checksum", "--json", *ssh_args(sshd))
    assert again.returncode == 0 and [json.loads(line) for line in again.stdout.splitlines()][-1]["files_skipped"] == 1
    (src / "log.txt").write_bytes(b"changed\n")
    refused = run("send", str(src / "log.txt"), f"root@127.0.0.1:{dest / 'src'}", *ssh_args(sshd))
    assert refused.returncode == 6 and "already here and different" in refused.stderr.decode()
    replaced = run("send", str(src / "log.txt"), f"root@127.0.0.1:{dest / 'src'}", "--overwrite", *ssh_args(sshd))
    assert replaced.returncode == 0 and (dest / "src" / "log.txt").read_bytes() == b"changed\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["recv", "out", "--checksum"], "for a pull over ssh"),
        (["send", "f", "h:1", "--overwrite"], "for a push over ssh"),
    ],
)
def test_the_options_for_the_far_side_need_a_far_side(args: list[str], needle: str) -> None:
    result = run(*args)
    assert result.returncode == 2 and needle in result.stderr.decode()


def test_a_far_rtransfer_too_old_for_ssh_is_named_with_both_versions(tmp_path: Path, sshd: LoopbackSshd) -> None:
    old = tmp_path / "old-rtransfer"
    old.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "rtransfer 0.9.0"; exit 0; fi\n'
        'echo \'{"event": "error", "code": 2, "kind": "usage", "message": "No such option: --stdio"}\' >&2\n'
        "exit 2\n"
    )
    old.chmod(0o755)
    (tmp_path / "f").write_bytes(b"x")
    result = run("send", str(tmp_path / "f"), "root@127.0.0.1:x", "-e", sshd.rsh(), "--remote-path", str(old))
    said = result.stderr.decode()
    assert result.returncode == 5 and "rtransfer 0.9.0" in said and "this is rtransfer " in said, said


def test_a_pull_over_two_ssh_sessions(tmp_path: Path, sshd: LoopbackSshd) -> None:
    data = os.urandom(16 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    result = run("recv", f"root@127.0.0.1:{tmp_path / 'f.bin'}", f"{tmp_path / 'out'}/", "--streams", "2", "--json",
                 *ssh_args(sshd))  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "out" / "f.bin").read_bytes() == data


def test_a_far_disk_that_fills_is_named_by_its_host(tmp_path: Path, sshd: LoopbackSshd) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        (tmp_path / "big.bin").write_bytes(os.urandom(8 << 20))
        result = run("send", str(tmp_path / "big.bin"), f"root@127.0.0.1:{small}", *ssh_args(sshd))
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode == 6 and lines[-1].startswith("rtransfer: error: root@127.0.0.1: "), lines
        assert not (small / "big.bin").exists()
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_selection_over_ssh_a_pull_excludes_and_a_push_deletes_and_dry_runs(tmp_path: Path, sshd: LoopbackSshd) -> None:
    """The rules go to the far sender of a pull; --delete and --dry-run to the far receiver of a
    push, whose verdicts come back to the terminal that asked."""
    tree = make_tree(tmp_path / "src")
    pulled = run("recv", f"root@127.0.0.1:{tree}/", str(tmp_path / "pulled"), "--exclude=*.sh", *ssh_args(sshd))
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert (tmp_path / "pulled" / "d" / "big.bin").exists() and not (tmp_path / "pulled" / "d" / "exec.sh").exists()
    (tmp_path / "pulled" / "stale").write_text("x")
    before = sorted(p.name for p in (tmp_path / "pulled").iterdir())
    dest = f"root@127.0.0.1:{tmp_path / 'pulled'}"
    dry = run("send", f"{tree}/", dest, "--delete", "--dry-run", "--json", *ssh_args(sshd))
    assert dry.returncode == 0, dry.stderr.decode()
    items = [json.loads(line) for line in dry.stdout.splitlines() if b'"item"' in line]
    assert {(i["action"], i["path"], i["dry_run"]) for i in items} == {
        ("send", "d/exec.sh", True),
        ("delete", "stale", True),
    }
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == before
    pushed = run("send", f"{tree}/", dest, "--delete", *ssh_args(sshd))
    assert pushed.returncode == 0, pushed.stderr.decode()
    assert differences(tree, tmp_path / "pulled") == [] and not (tmp_path / "pulled" / "stale").exists()


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_one_file_to_a_name_not_there_takes_that_name_as_scp_and_rsync_do(
    tmp_path: Path, sshd: LoopbackSshd, direction: str
) -> None:
    """``send f host:/x/renamed.txt`` made renamed.txt/f. A trailing slash, or a directory
    already there, still means "into it"; ``recv DEST`` over TCP stays a directory."""
    f = tmp_path / "f"
    f.write_bytes(b"data")
    (tmp_path / "x").mkdir()

    def copy(dest: str) -> subprocess.CompletedProcess[bytes]:
        if direction == "push":
            return run("send", str(f), f"root@127.0.0.1:{dest}", *ssh_args(sshd))
        return run("recv", f"root@127.0.0.1:{f}", dest, *ssh_args(sshd))

    for dest, lands in [
        ("x/renamed.txt", "x/renamed.txt"),
        ("x/slash/", "x/slash/f"),
        ("x", "x/f"),  # a directory there
        ("new/dir/y", "new/dir/y/f"),  # no parent: made as a directory, as before
    ]:
        result = copy(f"{tmp_path}/{dest}")  # a trailing slash kept
        assert result.returncode == 0, (dest, result.stderr.decode())
        assert (tmp_path / lands).read_bytes() == b"data", dest
    again = copy(str(tmp_path / "x" / "renamed.txt"))  # the same file there: nothing to do
    assert again.returncode == 0
    f.write_bytes(b"changed")
    kept = copy(str(tmp_path / "x" / "renamed.txt"))  # a different one: kept without --overwrite
    assert kept.returncode == 6 and (tmp_path / "x" / "renamed.txt").read_bytes() == b"data"
    (tmp_path / "x" / "other.txt").write_text("beside DEST")
    where, flags = f"{tmp_path}/x/renamed.txt", ("--delete", "--overwrite", *ssh_args(sshd))
    if direction == "push":
        trimmed = run("send", str(f), f"root@127.0.0.1:{where}", *flags)
    else:
        trimmed = run("recv", f"root@127.0.0.1:{f}", where, *flags)
    assert trimmed.returncode == 0, trimmed.stderr.decode()
    assert (tmp_path / "x" / "other.txt").exists()  # DEST's directory is not the transfer's to trim


def test_ssh_started_early_is_stopped_when_the_options_then_fail(tmp_path: Path) -> None:
    """A push starts ssh before its heavy imports (its connection overlaps them); options found
    wrong after that leave no ssh behind."""
    fake = tmp_path / "fake-ssh"
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}\nexec sleep 30\n")
    fake.chmod(0o755)
    (tmp_path / "f").write_bytes(b"x")
    result = run("send", str(tmp_path / "f"), "host:dest/", "-e", str(fake), "--chunk-size", "12Q")
    assert result.returncode == 2 and b"invalid size" in result.stderr
    if (tmp_path / "pid").exists():  # it got as far as starting
        pid = int((tmp_path / "pid").read_text())
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def counting_ssh(tmp_path: Path, sshd: LoopbackSshd) -> Path:
    """ssh, each start noted in a log (its pid)."""
    fake = tmp_path / "counting-ssh"
    fake.write_text(f'#!/bin/sh\necho $$ >> {tmp_path / "starts"}\nexec {sshd.rsh()} "$@"\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_ssh_is_started_once_from_the_arguments(tmp_path: Path, sshd: LoopbackSshd, direction: str) -> None:
    """The entry point starts ssh before the command line loads (cli/early.py), and the command
    keeps that session: one ssh per transfer."""
    fake = counting_ssh(tmp_path, sshd)
    (tmp_path / "f").write_bytes(os.urandom(1000))
    (tmp_path / "out").mkdir()
    common = ["-e", str(fake), "--remote-path", remote_program(), "--timeout", "20", "-q"]
    if direction == "push":
        result = run("send", str(tmp_path / "f"), f"root@127.0.0.1:{tmp_path / 'out'}/", *common)
    else:
        result = run("recv", f"root@127.0.0.1:{tmp_path / 'f'}", str(tmp_path / "out"), *common)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "out" / "f").read_bytes() == (tmp_path / "f").read_bytes()
    assert len((tmp_path / "starts").read_text().split()) == 1


def test_a_guess_the_command_then_refuses_leaves_no_ssh(tmp_path: Path) -> None:
    """The scanner doesn't check every value: ``--window many`` is typer's to refuse, after ssh
    was started from the arguments; it is stopped on the way out. --help starts none."""
    fake = tmp_path / "fake-ssh"
    fake.write_text(f"#!/bin/sh\necho $$ >> {tmp_path / 'pids'}\nexec sleep 30\n")
    fake.chmod(0o755)
    (tmp_path / "f").write_bytes(b"x")
    helped = run("send", "--help", str(tmp_path / "f"), "host:dest/", "-e", str(fake))
    assert helped.returncode == 0
    assert not (tmp_path / "pids").exists()
    refused = run("send", str(tmp_path / "f"), "host:dest/", "-e", str(fake), "--window", "many")
    assert refused.returncode == 2 and b"--window" in refused.stderr
    for pid in (tmp_path / "pids").read_text().split() if (tmp_path / "pids").exists() else []:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text().lower()


def test_the_far_side_leaves_its_pipes_blocking_for_what_runs_after_it(tmp_path: Path) -> None:
    """sshd's pipes may be shared with a wrapper that runs something after rtransfer: the far side
    reads them non-blocking through descriptions of its own, and leaves theirs as they were."""
    far = " ".join(rtransfer_cmd())
    after = f"{sys.executable} -c 'import os; print(\"blocking\", os.get_blocking(0), os.get_blocking(1))'"
    script = f"{far} recv --stdio --json --timeout 5 -- {tmp_path}/ </dev/stdin; {after}"
    done = subprocess.run(["sh", "-c", script], input=b"", capture_output=True, timeout=60)
    assert done.stdout.rsplit(b"\n", 2)[-2].endswith(b"blocking True True"), done.stdout[-200:]


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_standard_input_or_output_named_over_ssh_is_refused(tmp_path: Path, direction: str) -> None:
    """Over ssh the far side's stdin and stdout carry the transfer: ``HOST:-`` is refused (exit 2)
    before ssh starts, and a far side asked for it refuses too, rather than read or write nothing."""
    (tmp_path / "f").write_bytes(b"x")
    fake = tmp_path / "fake-ssh"
    fake.write_text(f"#!/bin/sh\necho $$ >> {tmp_path / 'pids'}\nexec sleep 30\n")
    fake.chmod(0o755)
    if direction == "push":
        result = run("send", str(tmp_path / "f"), "host:-", "-e", str(fake))
        far = run("recv", "--stdio", "--json", "--", "-", input_bytes=b"")
    else:
        result = run("recv", "host:-", str(tmp_path / "out"), "-e", str(fake))
        far = run("send", "--stdio", "--json", "--", "-", input_bytes=b"")
    assert result.returncode == 2 and b"standard input and output carry the transfer" in result.stderr
    assert not (tmp_path / "pids").exists() and not (tmp_path / "out").exists()
    assert far.returncode == 2 and b"carry the transfer" in far.stderr
