"""The one command runner (LocalAccess / CommandStream) on real processes."""

from __future__ import annotations

import os
import threading

import pytest

from coderz_backup.access import LocalAccess
from helpers import tar_bytes as _tar
from coderz_backup.errors import ProducerError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:   # a zombie is as good as gone
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_a_timeout_kills_what_the_command_left_running_after_it_exited(tmp_path):
    """`sh -c 'sleep & exit 0'`: the shell is gone at once, its child holds stdout open. The
    timeout must still end the run and kill the child, not wait for it."""
    pidfile = tmp_path / "child.pid"
    outcome: dict = {}

    def _run() -> None:
        try:
            LocalAccess().run(["sh", "-c", f"sleep 600 & echo $! > {pidfile}; exit 0"], timeout=2, label="leaver")
        except ProducerError as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=_run, daemon=True)
    runner.start()
    runner.join(60)
    child = int(pidfile.read_text())
    try:
        assert not runner.is_alive(), "the run waited for the left-behind child"
        assert "did not finish within 2s and was killed" in str(outcome.get("error"))
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, 9)


def test_a_normal_exit_leaves_what_the_command_started_on_purpose(tmp_path):
    """A start_command may leave its service running in the background: not killed on success."""
    pidfile = tmp_path / "svc.pid"
    LocalAccess().run(["sh", "-c", f"sleep 600 >/dev/null 2>&1 & echo $! > {pidfile}"], timeout=30, label="start")
    child = int(pidfile.read_text())
    try:
        assert _alive(child)
    finally:
        os.kill(child, 9)


@pytest.mark.parametrize("code", [1, 3])
def test_exit_status_is_an_error_with_the_stderr_tail(code):
    with pytest.raises(ProducerError, match=f"exited with status {code}: boom"):
        LocalAccess().run(["sh", "-c", f"echo boom >&2; exit {code}"], timeout=30, label="x")


def test_prefix_copy_that_exits_non_zero_never_lands_under_its_final_name(tmp_path):
    """`kubectl exec … -- cat file` whose exec fails after the bytes came: the exit status is
    seen before the writer commits, so no file is renamed into place."""
    from coderz_backup.access import PrefixAccess
    from coderz_backup.access import CHUNK
    from coderz_backup.writer import write_stream

    src = tmp_path / "dump.rdb"
    src.write_bytes(b"REDIS0011" + b"x" * 100_000)
    acc = PrefixAccess(["sh", "-c", '"$@"; echo "error: connection to the pod lost" >&2; exit 3', "sh"])
    with pytest.raises(ProducerError, match="exited with status 3: error: connection to the pod lost"):
        with acc.open_read(str(src)) as fh:
            write_stream(tmp_path / "out", "copy.rdb", iter(lambda: fh.read(CHUNK), b""))
    assert not (tmp_path / "out" / "copy.rdb").exists()
    assert not list((tmp_path / "out").glob(".*partial"))
    ok = PrefixAccess(["env"])   # a prefix that works: the same copy lands
    with ok.open_read(str(src)) as fh:
        write_stream(tmp_path / "out", "copy.rdb", iter(lambda: fh.read(CHUNK), b""))
    assert (tmp_path / "out" / "copy.rdb").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("members", [
    [("sym", "s", "."), ("sym", "p", "s/.."), ("file", "p/evil", "x")],          # through a link chain
    [("sym", "l", "../outside")],                                                # link out of the root
    [("sym", "l", "sub"), ("file", "l", "x")],                                   # writing through a link
    [("sym", "l", "sub"), ("hard", "h", "l")],                                   # hard link to a link
    [("hard", "h", "../outside/x")],
    [("file", "../x", "x")],
], ids=["chain", "out", "replace", "hard-to-sym", "hard-out", "dotdot"])
def test_untar_refuses_link_tricks_and_writes_nothing_outside(tmp_path, members):
    from coderz_backup.errors import AccessError

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    with pytest.raises(AccessError, match="refusing unsafe archive member"):
        LocalAccess().untar_into(str(root), [_tar(members)])
    assert list((tmp_path / "outside").iterdir()) == [] and not (tmp_path / "x").exists()
    assert not (root / "sub" / "x").exists() and not (tmp_path / "evil").exists()


def test_untar_keeps_ordinary_relative_links(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    n = LocalAccess().untar_into(str(root), [_tar([("dir", "releases", ""), ("dir", "releases/v2", ""),
                                                   ("file", "releases/v2/app.conf", "a=1"),
                                                   ("sym", "current", "releases/v2")])])
    assert n == 4 and (root / "current" / "app.conf").read_text() == "a=1"


def test_a_data_dir_tarball_never_hard_links_to_a_file_it_did_not_bring(tmp_path):
    """A hard link to a file already in the folder (e.g. the old data kept inside a container's
    data dir), followed by a member of the same name, would rewrite that file: refused before
    it is written; a hard link to a file of the same archive is fine."""
    from helpers import tar_bytes

    from coderz_backup.access import LocalAccess
    from coderz_backup.errors import AccessError

    root = tmp_path / "data"
    (root / ".coderz-old-20260306").mkdir(parents=True)
    victim = root / ".coderz-old-20260306" / "wal"
    victim.write_text("the old data\n")
    evil = tar_bytes([("hard", "wal", ".coderz-old-20260306/wal"), ("file", "wal", "overwritten\n")])
    with pytest.raises(AccessError, match="a hard link must point to a file earlier in the same archive"):
        LocalAccess().untar_into(str(root), [evil])
    assert victim.read_text() == "the old data\n" and not (root / "wal").exists()

    ok = tar_bytes([("file", "a", "x\n"), ("hard", "b", "a")])
    assert LocalAccess().untar_into(str(root), [ok]) == 2
    assert os.path.samefile(root / "a", root / "b")
