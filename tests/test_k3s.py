"""k3s: SQLite datastore (a real, live-written state.db) and the etcd-snapshot command sequence.

No k3s binary is installable here. The SQLite mode is tested on a real SQLite ``state.db``
in WAL mode (kine's layout) that a thread keeps writing while the backup runs. The
etcd-snapshot mode is tested through the command-prefix access against a real etcd 3.4:
a stand-in ``k3s`` script on the prefix's PATH implements the two k3s sub-commands we
use (``etcd-snapshot save --name --dir`` → ``etcdctl snapshot save <dir>/<name>-<node>-<ts>``
like k3s names its files, and ``server --cluster-reset --cluster-reset-restore-path``
→ ``etcdctl snapshot restore``) and logs every call, so the test sees the exact
sequence and that nothing is left in the node's snapshot folder.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from coderz_backup.tarfile_compat import tarfile
import threading
import time
from pathlib import Path

import pytest
from isal import igzip

from coderz_backup.access import PrefixAccess
from coderz_backup.services.k3s import K3sConfig
from coderz_backup.errors import ArtifactError, RestoreError, VerifyError
from coderz_backup.services import create, expected_artifacts
from coderz_backup.services.k3s import SQLITE_ARTIFACT, K3sService

try:
    from etcd_server import EtcdServer
except ImportError:  # pragma: no cover - before the move
    from test_etcd import EtcdServer


def _kine_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, value BLOB)")
    db.executemany("INSERT INTO kine (name, value) VALUES (?, ?)",
                   [(f"/registry/pods/default/p{i}", os.urandom(200)) for i in range(2000)])
    db.commit()
    db.close()


@pytest.fixture
def k3s_dir(tmp_path):
    data = tmp_path / "rancher-k3s"
    db = data / "server" / "db"
    db.mkdir(parents=True)
    _kine_db(db / "state.db")
    (db / "snapshots").mkdir()
    (db / "snapshots" / "old-snapshot").write_bytes(b"x" * 1000)
    (data / "server" / "token").write_text("K10abc::server:secrettoken\n")
    (data / "server" / "token").chmod(0o600)
    return data


class Writer(threading.Thread):
    """Keeps inserting rows into state.db, one transaction of 50 rows at a time."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stop, self.batches = path, threading.Event(), 0

    def run(self) -> None:
        db = sqlite3.connect(self.path, timeout=30)
        while not self.stop.is_set():
            with db:
                db.executemany("INSERT INTO kine (name, value) VALUES (?, ?)",
                               [(f"/registry/events/e{self.batches}-{i}", os.urandom(500)) for i in range(50)])
            self.batches += 1
        db.close()


#: verify of a good sqlite-mode archive: its two members (state.db, token), the database checked
SQLITE_VERIFIED = "gzip and tar intact, 2 entries, state.db integrity_check ok, token present"


def _svc(data: Path, **over) -> K3sService:
    cfg = K3sConfig(kind="k3s", data_dir=str(data), **over)
    return create("etcd-k3s", cfg)


def test_auto_mode_picks_sqlite_and_copies_a_consistent_db_while_it_is_written(k3s_dir, tmp_path):
    into = tmp_path / "snap"
    into.mkdir()
    writer = Writer(k3s_dir / "server" / "db" / "state.db")
    writer.start()
    try:
        while writer.batches < 5:
            time.sleep(0.01)
        [res] = _svc(k3s_dir).backup(into)
    finally:
        writer.stop.set()
        writer.join()
    assert res.status == "ok" and res.path == SQLITE_ARTIFACT and res.details["mode"] == "sqlite"
    names = []
    out = tmp_path / "x"
    with igzip.open(into / SQLITE_ARTIFACT) as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        for m in tar:
            names.append(m.name)
            if m.name in ("server/db/state.db", "server/token"):
                tar.extract(m, out, filter="data")
    assert "server/db/state.db" in names and "server/token" in names
    # never the live WAL/SHM files, nor k3s's own snapshot folder
    assert not [n for n in names if n.endswith(("-wal", "-shm")) or "snapshots" in n]
    copy = sqlite3.connect(out / "server" / "db" / "state.db")
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows, top = copy.execute("SELECT count(*), max(id) FROM kine").fetchone()
    # whole transactions only: 2000 seed rows + a multiple of 50, ids without gaps
    assert rows == top and rows >= 2000 + 5 * 50 and (rows - 2000) % 50 == 0
    assert (out / "server" / "token").read_text().startswith("K10")
    assert _svc(k3s_dir).verify(into / SQLITE_ARTIFACT) == SQLITE_VERIFIED


def test_copy_of_a_big_state_db_finishes_while_kine_keeps_writing(k3s_dir, tmp_path):
    """A state.db of many backup steps, written all the time (kine renews leases every few
    seconds): a stepwise online backup restarts on every write and never ends; ours must."""
    db_path = k3s_dir / "server" / "db" / "state.db"
    db = sqlite3.connect(db_path)
    with db:
        for _ in range(8):
            db.executemany("INSERT INTO kine (name, value) VALUES (?, ?)",
                           [("/registry/configmaps/big", os.urandom(2000)) for _ in range(5000)])
    db.close()
    assert db_path.stat().st_size > 64 * 1024 * 1024   # far more than one step of a stepwise copy
    into = tmp_path / "snap"
    into.mkdir()
    writer = Writer(db_path)
    writer.start()
    outcome: dict = {}

    def _backup() -> None:
        try:
            outcome["results"] = _svc(k3s_dir).backup(into)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    runner = threading.Thread(target=_backup, daemon=True)
    try:
        while writer.batches < 3:
            time.sleep(0.01)
        runner.start()
        runner.join(180)
        finished_while_written = not runner.is_alive()
        batches_during = writer.batches
    finally:
        writer.stop.set()
        writer.join()
        runner.join(120)
    assert finished_while_written, "the state.db copy did not finish while the database was being written"
    assert "error" not in outcome, outcome.get("error")
    [res] = outcome["results"]
    assert res.status == "ok" and batches_during > 3
    assert _svc(k3s_dir).verify(into / SQLITE_ARTIFACT) == SQLITE_VERIFIED


def test_sqlite_restore_puts_db_and_token_back_and_keeps_the_old_ones(k3s_dir, tmp_path):
    into = tmp_path / "snap"
    into.mkdir()
    calls = tmp_path / "calls.log"
    svc = _svc(k3s_dir, mode="sqlite", stop_command=["sh", "-c", f"echo stop >> {calls}"],
               start_command=["sh", "-c", f"echo start >> {calls}"])
    [res] = svc.backup(into)
    db = sqlite3.connect(k3s_dir / "server" / "db" / "state.db")
    db.execute("DELETE FROM kine")
    db.commit()
    db.close()
    (k3s_dir / "server" / "token").write_text("changed")
    detail = svc.restore(into / res.path)
    assert calls.read_text().split() == ["stop", "start"]
    db = sqlite3.connect(k3s_dir / "server" / "db" / "state.db")
    assert db.execute("SELECT count(*) FROM kine").fetchone()[0] == 2000
    assert (k3s_dir / "server" / "token").read_text().startswith("K10")
    kept = [p.name for p in (k3s_dir / "server").iterdir() if ".coderz-old-" in p.name]
    assert sorted(n.split(".coderz-old-")[0] for n in kept) == ["db", "token"]
    assert "previous kept" in detail


def test_sqlite_restore_without_stop_command_changes_nothing(k3s_dir, tmp_path):
    into = tmp_path / "snap"
    into.mkdir()
    svc = _svc(k3s_dir, mode="sqlite")
    [res] = svc.backup(into)
    before = sorted(p.name for p in (k3s_dir / "server").iterdir())
    with pytest.raises(RestoreError, match="stop_command"):
        svc.restore(into / res.path)
    assert sorted(p.name for p in (k3s_dir / "server").iterdir()) == before


def test_damaged_archive_fails_verify_and_restore(k3s_dir, tmp_path):
    into = tmp_path / "snap"
    into.mkdir()
    svc = _svc(k3s_dir, mode="sqlite", stop_command=["true"])
    [res] = svc.backup(into)
    art = into / res.path
    good = art.read_bytes()
    for at in sorted({10, *range(len(good) // 12, len(good), len(good) // 12), len(good) - 5}):
        data = bytearray(good)
        data[at] ^= 0xFF
        art.write_bytes(bytes(data))
        with pytest.raises(VerifyError, match=r"^k3s-server-db\.tar\.gz: archive is damaged \("):
            svc.verify(art)
    with pytest.raises(RestoreError, match="nothing changed"):
        svc.restore(art)


def test_missing_token_or_datastore_fail_clearly(k3s_dir, tmp_path):
    (k3s_dir / "server" / "token").unlink()
    with pytest.raises(ArtifactError, match="token"):
        _svc(k3s_dir).backup(tmp_path)
    with pytest.raises(ArtifactError, match="neither embedded etcd"):
        _svc(tmp_path / "nothing-here").backup(tmp_path)
    assert not list(tmp_path.glob("*.tar.gz"))


def test_artifact_names_follow_the_mode():
    assert expected_artifacts("etcd-k3s", K3sConfig(kind="k3s", mode="sqlite")) == [SQLITE_ARTIFACT]
    assert expected_artifacts("etcd-k3s", K3sConfig(kind="k3s", mode="etcd-snapshot")) == ["etcd-k3s.snapshot"]


# -- etcd-snapshot mode through a command prefix -----------------------------------------

K3S_STANDIN = r"""#!/bin/sh
# stand-in for the two k3s sub-commands coderz-backup runs (see the test module docstring)
echo "$*" >> "$K3S_CALLS"
if [ "$1" = etcd-snapshot ] && [ "$2" = save ]; then
  shift 2; name=on-demand; dir=/var/lib/rancher/k3s/server/db/snapshots
  while [ $# -gt 0 ]; do case "$1" in --name) name=$2; shift;; --dir) dir=$2; shift;; esac; shift; done
  mkdir -p "$dir" && exec etcdctl --endpoints="$K3S_ETCD" snapshot save "$dir/$name-node1-$(date +%s)" >/dev/null
elif [ "$1" = server ]; then
  for a in "$@"; do case "$a" in --cluster-reset-restore-path=*) f=${a#*=};; esac; done
  exec etcdctl snapshot restore "$f" --data-dir "$K3S_RESTORE_DIR" >/dev/null 2>&1
fi
echo "k3s stand-in: unsupported: $*" >&2; exit 2
"""


@pytest.fixture
def node(tmp_path):
    """A 'node' reached through exec_prefix: env sets the stand-in k3s on PATH."""
    srv = EtcdServer(tmp_path / "etcd").start()
    for i in range(50):
        srv.put(f"/registry/configmaps/default/cm{i}".encode(), f"value-{i}".encode())
    bin_dir = tmp_path / "node-bin"
    bin_dir.mkdir()
    k3s = bin_dir / "k3s"
    k3s.write_text(K3S_STANDIN)
    k3s.chmod(k3s.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "k3s-calls.log"
    prefix = ["env", f"PATH={bin_dir}:{os.environ['PATH']}", f"K3S_CALLS={calls}",
              f"K3S_ETCD={srv.url}", f"K3S_RESTORE_DIR={tmp_path / 'restored'}", "ETCDCTL_API=3"]
    yield srv, prefix, calls, tmp_path
    srv.stop()


def test_etcd_snapshot_mode_runs_k3s_through_the_prefix_and_cleans_up(node):
    srv, prefix, calls, tmp = node
    tmp_dir = tmp / "node-tmp"
    tmp_dir.mkdir()
    cfg = K3sConfig(kind="k3s", mode="etcd-snapshot", exec_prefix=prefix, snapshot_tmp_dir=str(tmp_dir))
    svc = create("etcd-k3s", cfg)
    assert isinstance(svc.access, PrefixAccess)
    into = tmp / "snap"
    into.mkdir()
    [res] = svc.backup(into)
    assert res.status == "ok" and res.path == "etcd-k3s.snapshot" and res.details["mode"] == "etcd-snapshot"
    assert res.details["snapshot"].startswith("coderz-") and "-node1-" in res.details["snapshot"]
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("etcd-snapshot save --name coderz-") and f"--dir {tmp_dir}/coderz-backup-" in lines[0]
    assert list(tmp_dir.iterdir()) == []  # the node's copy is gone
    assert svc.verify(into / res.path) == (f"bbolt header and SHA-256 trailer ok "
                                           f"({(into / res.path).stat().st_size} bytes)")

    # restore: stop, the documented cluster-reset command, start
    events = tmp / "lifecycle.log"
    cfg2 = cfg.model_copy(update={"stop_command": ["sh", "-c", f"echo stop >> {events}"],
                                  "start_command": ["sh", "-c", f"echo start >> {events}"]})
    detail = create("etcd-k3s", cfg2).restore(into / res.path)
    assert "cluster reset" in detail
    assert calls.read_text().splitlines()[-1].startswith("server --cluster-reset --cluster-reset-restore-path=/")
    assert events.read_text().split() == ["stop", "start"]
    assert list(tmp_dir.iterdir()) == []  # the snapshot copied to the node for the reset is gone again
    # the restored member holds the keys
    restored = EtcdServer(tmp / "etcd2", data=tmp / "restored").start()
    try:
        keys = restored.everything()
        assert keys[b"/registry/configmaps/default/cm7"] == b"value-7" and len(keys) == 50
    finally:
        restored.stop()

    # a reset that fails (here: the target data dir is not empty) never leaves k3s down
    with pytest.raises(RestoreError, match=r"cluster reset failed: .*; k3s started"):
        create("etcd-k3s", cfg2).restore(into / res.path)
    assert events.read_text().split() == ["stop", "start", "stop", "start"]
    assert list(tmp_dir.iterdir()) == []


def test_cluster_reset_in_a_container_is_refused_before_anything_changes(node, docker_engine):
    """Stopping a containerised k3s stops the container the reset would run in: refused up front."""
    srv, prefix, calls, tmp = node
    into = tmp / "snap"
    into.mkdir()
    [res] = create("etcd-k3s", K3sConfig(kind="k3s", mode="etcd-snapshot", exec_prefix=prefix,
                                          snapshot_tmp_dir=str(tmp))).backup(into)
    before = calls.read_text()
    svc = create("etcd-k3s", K3sConfig(kind="k3s", mode="etcd-snapshot", container="coderz-k3s"))
    with pytest.raises(RestoreError, match="cannot run in .*coderz-k3s.* while k3s is stopped; nothing changed"):
        svc.restore(into / res.path)
    assert calls.read_text() == before


#: what a real ``k3s etcd-snapshot save`` prints on a server with the SQLite datastore, and its exit status:
#: k3s-io/k3s pkg/cli/etcdsnapshot/etcd_snapshot.go ``save`` returns
#: ``fmt.Errorf("etcd database not found in %s", serverConfig.ControlConfig.DataDir)`` (DataDir is
#: ``server.ResolveDataDir`` = ``<data-dir>/server``) and cmd/etcdsnapshot/main.go ends with
#: ``logrus.Fatal(err)``: logrus' text formatter on a non-terminal writes ``time="…" level=fatal msg="…"``
#: to stderr and exits 1.
K3S_ON_SQLITE = ('time="2026-03-04T05:06:07Z" level=fatal msg="etcd database not found in '
                 '/var/lib/rancher/k3s/server"')


def test_etcd_snapshot_mode_on_a_sqlite_k3s_says_so(node):
    srv, prefix, calls, tmp = node
    failing = tmp / "node-bin" / "k3s"
    failing.write_text(f"#!/bin/sh\necho '{K3S_ON_SQLITE}' >&2\nexit 1\n")
    cfg = K3sConfig(kind="k3s", mode="etcd-snapshot", exec_prefix=prefix, snapshot_tmp_dir=str(tmp))
    with pytest.raises(ArtifactError, match=r"k3s runs without embedded etcd \(.*etcd database not found in "
                                            r"/var/lib/rancher/k3s/server.*\); set mode = \"sqlite\" \(or auto\)"):
        create("etcd-k3s", cfg).backup(tmp)
    assert not (tmp / "etcd-k3s.snapshot").exists()
