"""Selection as rsync users spell it: the trailing slash, --exclude/--include, --delete, --dry-run."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import Proc, Receiver, run


def make_tree(root: Path) -> Path:
    src = root / "src"
    for path, text in {
        "keep.txt": "k",
        "drop.pyc": "d",
        "sub/inner.txt": "i",
        "sub/inner.pyc": "p",
        "cache/big.bin": "c" * 1000,
    }.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    return src


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: its kind, mode, mtime and content digest (a link's target)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                what = os.readlink(path)
            elif path.is_file():
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            found[str(path.relative_to(root))] = f"{st.st_mode:o} {st.st_mtime_ns} {what}"
    return found


def listed(root: Path) -> set[str]:
    return set(snapshot(root))


def test_a_trailing_slash_sends_what_the_directory_holds(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_tree(tmp_path)
    os.utime(src, (1_000_000_000, 1_000_000_000))
    procs.append(rx := Receiver(tmp_path / "out"))
    assert run("send", f"{src}/", rx.address).returncode == 0
    assert rx.finish() == 0
    assert listed(tmp_path / "out") == listed(src)
    assert (tmp_path / "out").stat().st_mtime == 1_000_000_000  # as rsync: DEST takes the source's times


def test_exclude_and_include_leave_out_what_rsync_leaves_out(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_tree(tmp_path)
    rules = ["--include=sub/inner.pyc", "--exclude=*.pyc", "--exclude=/cache"]
    subprocess.run(["rsync", "-a", *rules, f"{src}/", f"{tmp_path / 'by-rsync'}/"], check=True)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", f"{src}/", rx.address, *rules)
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    expected = {"keep.txt", "sub", "sub/inner.txt", "sub/inner.pyc"}
    assert listed(tmp_path / "out") == listed(tmp_path / "by-rsync") == expected


def test_delete_removes_what_the_source_lacks_and_keeps_what_is_excluded(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_tree(tmp_path)
    out = tmp_path / "out"
    (out / "sub" / "gone-dir" / "deep").mkdir(parents=True)
    (out / "sub" / "gone-dir" / "deep" / "f").write_text("x")
    (out / "gone.txt").write_text("x")
    (out / "local.pyc").write_text("excluded here, so kept")
    procs.append(rx := Receiver(out, "--delete"))
    assert run("send", f"{src}/", rx.address, "--exclude=*.pyc").returncode == 0
    assert rx.finish() == 0
    assert listed(out) == {"keep.txt", "sub", "sub/inner.txt", "cache", "cache/big.bin", "local.pyc"}
    deleted = {e["path"] for e in rx.events("item") if e["action"] == "delete" and not e["dry_run"]}
    assert deleted == {"gone.txt", "sub/gone-dir/", "sub/gone-dir/deep/", "sub/gone-dir/deep/f"}  # each, as rsync -v


def test_delete_keeps_what_the_rules_exclude_inside_a_directory_it_removes(tmp_path: Path, procs: list[Proc]) -> None:
    """rsync keeps ``old/keep.log`` and says "cannot delete non-empty directory: old"; a recursive
    removal took it (finding 4 of the trust issue)."""
    src = make_tree(tmp_path)
    out = tmp_path / "out"
    (out / "old" / "deeper").mkdir(parents=True)
    (out / "old" / "keep.log").write_text("excluded: protected")
    (out / "old" / "deeper" / "x.txt").write_text("goes")
    procs.append(rx := Receiver(out, "--delete"))
    assert run("send", f"{src}/", rx.address, "--exclude=*.log").returncode == 0
    assert rx.finish() == 0
    assert (out / "old" / "keep.log").read_text() == "excluded: protected"
    assert not (out / "old" / "deeper").exists()
    assert any("cannot delete non-empty directory: old" in w["message"] for w in rx.events("warning"))
    rsync_out = tmp_path / "rsync-out"
    shutil.copytree(out, rsync_out, symlinks=True)
    (rsync_out / "old" / "deeper").mkdir()
    (rsync_out / "old" / "deeper" / "x.txt").write_text("goes")
    done = subprocess.run(
        ["rsync", "-a", "--delete", "--exclude=*.log", f"{src}/", f"{rsync_out}/"], capture_output=True
    )
    assert b"cannot delete non-empty directory: old" in done.stdout
    assert listed(rsync_out) == listed(out)


def test_delete_excluded_removes_what_the_rules_exclude_too(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_tree(tmp_path)
    out = tmp_path / "out"
    (out / "old").mkdir(parents=True)
    (out / "old" / "keep.log").write_text("x")
    (out / "top.log").write_text("x")
    procs.append(rx := Receiver(out, "--delete"))
    assert run("send", f"{src}/", rx.address, "--exclude=*.log", "--delete-excluded").returncode == 0
    assert rx.finish() == 0
    assert not (out / "old").exists() and not (out / "top.log").exists()


def test_delete_never_follows_a_planted_link_nor_leaves_the_tree(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_tree(tmp_path)
    outside = tmp_path / "outside"
    (outside / "precious").mkdir(parents=True)
    (outside / "precious" / "file").write_text("must stay")
    (tmp_path / "beside.txt").write_text("must stay")
    out = tmp_path / "out"
    out.mkdir()
    (out / "link-to-outside").symlink_to(outside)  # extraneous: the link goes, not what it points at
    (out / "sub").symlink_to(outside / "precious")  # where a directory of the transfer should be
    before = snapshot(outside)
    procs.append(rx := Receiver(out, "--delete", "--overwrite"))
    result = run("send", f"{src}/", rx.address)
    assert rx.finish() != 0  # the planted "sub" is refused, not written or deleted through
    assert result.returncode != 0
    assert snapshot(outside) == before and (tmp_path / "beside.txt").read_text() == "must stay"
    (out / "sub").unlink()
    procs.append(rx := Receiver(out, "--delete"))
    assert run("send", f"{src}/", rx.address).returncode == 0
    assert rx.finish() == 0
    assert not (out / "link-to-outside").is_symlink() and snapshot(outside) == before


def test_a_senders_delete_needs_the_receivers_consent(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_tree(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("not the sender's to delete")
    procs.append(rx := Receiver(out))
    result = run("send", f"{src}/", rx.address, "--delete")
    assert result.returncode == 2 and b"--delete" in result.stderr  # the receiver's outcome (it was 1)
    assert rx.finish() == 2
    assert (out / "mine.txt").exists()
    procs.append(rx := Receiver(out, "--overwrite"))
    assert run("send", f"{src}/", rx.address, "--delete").returncode == 0
    assert rx.finish() == 0 and not (out / "mine.txt").exists()


def test_a_dry_run_says_what_would_change_and_changes_nothing(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_tree(tmp_path)
    out = tmp_path / "out"
    procs.append(rx := Receiver(out))
    assert run("send", f"{src}/", rx.address).returncode == 0
    assert rx.finish() == 0
    (src / "new.txt").write_text("new")
    (src / "keep.txt").write_text("changed")
    (out / "extra.txt").write_text("extra")
    before_src, before_out = snapshot(src), snapshot(out)
    procs.append(rx := Receiver(out, "--overwrite", "--delete"))
    result = run("send", f"{src}/", rx.address, "--dry-run", "--exclude=*.pyc")
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    said = {(e["action"], e["path"]) for e in rx.events("item")}
    assert said == {("send", "new.txt"), ("replace", "keep.txt"), ("delete", "extra.txt")}
    assert all(e["dry_run"] for e in rx.events("item"))
    assert snapshot(src) == before_src and snapshot(out) == before_out


def test_a_receivers_dry_run_into_a_missing_dest_creates_nothing(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_tree(tmp_path)
    out = tmp_path / "not-yet"
    procs.append(rx := Receiver(out, "-n"))
    assert run("send", str(src), rx.address).returncode == 0
    assert rx.finish() == 0
    assert not out.exists()
    said = {(e["action"], e["path"]) for e in rx.events("item")}
    assert ("send", "src/") in said and ("send", "src/sub/inner.txt") in said


def test_the_options_work_the_same_with_the_sender_listening(tmp_path: Path, procs: list[Proc]) -> None:
    """The rules and --delete travel in the handshake, whichever side dialed."""
    src = make_tree(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    procs.append(tx := Proc(["send", f"{src}/", "--listen", "127.0.0.1:0", "--json", "--exclude=*.pyc", "--delete"]))
    port = tx.wait_event("listening")["port"]
    result = run("recv", str(out), "--connect", f"127.0.0.1:{port}", "--delete", "--json")
    assert result.returncode == 0, result.stderr
    assert tx.finish() == 0
    assert listed(out) == {"keep.txt", "sub", "sub/inner.txt", "cache", "cache/big.bin"}


def test_conflicts_are_each_named_and_kept_the_rest_arrives_and_both_sides_exit_6(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """One different file at the destination aborted the whole tree, naming only the first."""
    src = make_tree(tmp_path)
    out = tmp_path / "out"
    (out / "src" / "sub").mkdir(parents=True)
    (out / "src" / "keep.txt").write_text("mine")
    (out / "src" / "sub" / "inner.txt").write_text("mine too")
    procs.append(rx := Receiver(out))
    result = run("send", str(src), rx.address)
    assert rx.finish() == 6 and result.returncode == 6
    kept = {e["path"] for e in rx.events("item") if e["action"] == "conflict"}
    assert kept == {"src/keep.txt", "src/sub/inner.txt"}
    assert "2 files were already here and different" in rx.events("error")[0]["message"]
    assert "2 files were already here and different" in result.stderr.decode()  # the sender ends with the receiver
    assert (out / "src" / "keep.txt").read_text() == "mine" and (
        out / "src" / "sub" / "inner.txt"
    ).read_text() == "mine too"
    for rest in ("drop.pyc", "sub/inner.pyc", "cache/big.bin"):
        assert (out / "src" / rest).read_bytes() == (src / rest).read_bytes()


def test_a_dry_run_lists_its_conflicts_is_labelled_and_exits_as_the_run_would(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """A dry run stopped at the first conflict, and its summary said "sent 0 B in 0 files (5 files
    ... already there, skipped)"."""
    src = make_tree(tmp_path)
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    (out / "src" / "keep.txt").write_text("mine")
    procs.append(tx := Proc(["send", str(src), "--listen", "127.0.0.1:0", "--json"]))
    port = tx.wait_event("listening")["port"]
    result = run("recv", str(out), "--connect", f"127.0.0.1:{port}", "--dry-run")
    said = result.stderr.decode()
    assert result.returncode == 6 and tx.finish() == 6, said
    assert "would keep src/keep.txt: already here and different" in said
    assert "would send src/cache/big.bin" in said
    assert "1 file was already here and different, and kept (use --overwrite to replace) (DRY RUN" in said
    assert (out / "src" / "keep.txt").read_text() == "mine" and not (out / "src" / "drop.pyc").exists()


def test_a_dry_runs_summary_is_labelled_and_counts_what_it_would_do(tmp_path: Path, procs: list[Proc]) -> None:
    """It said "sent 0 B in 0 files (5 files ... already there, skipped)", as if a transfer had run."""
    src = make_tree(tmp_path)
    procs.append(tx := Proc(["send", str(src), "--listen", "127.0.0.1:0", "--json"]))
    port = tx.wait_event("listening")["port"]
    result = run("recv", str(tmp_path / "out"), "--connect", f"127.0.0.1:{port}", "--dry-run")
    said = result.stderr.decode()
    assert result.returncode == 0 and tx.finish() == 0, said
    summary = said.splitlines()[-1]
    assert summary.startswith("rtransfer: dry run, nothing changed: 5 files of") and summary.endswith("(DRY RUN)")
    assert "would send 8" in summary and "skipped" not in summary
    assert tx.events("done")[0]["dry_run"] is True and not tx.events("warning")  # nothing "skipped"
    assert not (tmp_path / "out").exists()


def test_delete_trims_only_the_directories_sent_never_dest_itself(tmp_path: Path, procs: list[Proc]) -> None:
    """A single file sent with --delete emptied DEST; ``send src`` trimmed DEST, not only DEST/src
    (rsync trims only what the transfer holds as a directory: ``src/`` is DEST itself)."""
    src = make_tree(tmp_path)
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    (out / "mine.txt").write_text("the receiver's")
    (out / "src" / "stale.txt").write_text("not in the source")
    procs.append(rx := Receiver(out, "--delete"))
    assert run("send", str(src / "keep.txt"), rx.address, "--delete").returncode == 0 and rx.finish() == 0
    assert (out / "mine.txt").exists() and (out / "src" / "stale.txt").exists()
    procs.append(rx := Receiver(out, "--delete"))
    assert run("send", str(src), rx.address, "--delete").returncode == 0 and rx.finish() == 0
    assert (out / "mine.txt").exists() and not (out / "src" / "stale.txt").exists()
