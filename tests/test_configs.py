"""Configs tree → configs.tar.gz: round trip, excludes, path safety."""

from __future__ import annotations

import io
import os
from coderz_backup.tarfile_compat import tarfile

import pytest

from coderz_backup.access import LocalAccess
from coderz_backup.services.configs import ConfigsConfig
from coderz_backup.errors import ArtifactError, RestoreError, VerifyError
from coderz_backup.services.configs import ConfigsService


def _tree(root):
    conf = root / "opt" / "coderz" / "configs"
    (conf / "grafana" / "provisioning").mkdir(parents=True)
    (conf / "docker-compose.yml").write_text("services: {}\n")
    (conf / "grafana" / "provisioning" / "ds.yml").write_text("apiVersion: 1\n")
    secret = conf / "secret.env"
    secret.write_text("TOKEN=abc\n")
    secret.chmod(0o600)
    script = conf / "entry.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    os.chown(conf / "grafana" / "provisioning" / "ds.yml", 472, 472)
    os.symlink("docker-compose.yml", conf / "compose.yml")
    (conf / "cache").mkdir()
    (conf / "cache" / "junk.bin").write_bytes(os.urandom(4096))
    (conf / "debug.log").write_text("noise")
    return conf


def _listing(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            data = os.readlink(p) if os.path.islink(p) else (open(p, "rb").read() if os.path.isfile(p) else None)
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, data)
    return out


def test_configs_round_trip_keeps_bytes_modes_owners_and_links(tmp_path):
    conf = _tree(tmp_path / "src")
    svc = ConfigsService("configs", ConfigsConfig(kind="configs", paths=[str(conf)], exclude=["cache", "*.log"]),
                         LocalAccess())
    snap = tmp_path / "snap"
    snap.mkdir()
    [res] = svc.backup(snap)
    assert res.status == "ok" and res.details["excluded"] == 2
    assert "entries" in svc.verify(snap / "configs.tar.gz")

    target = tmp_path / "restore"
    target.mkdir()
    svc.restore(snap / "configs.tar.gz", target=target)
    restored = target / str(conf).lstrip("/")
    expected = {k: v for k, v in _listing(conf).items() if not k.startswith("cache") and k != "debug.log"}
    assert _listing(restored) == expected

    # a second restore over it: a file made since, which the archive does not have, is left in place
    (restored / "added-after-the-backup.yml").write_text("kept: true\n")
    svc.restore(snap / "configs.tar.gz", target=target)
    assert (restored / "added-after-the-backup.yml").read_text() == "kept: true\n"
    assert {k: v for k, v in _listing(restored).items() if k != "added-after-the-backup.yml"} == expected


def test_missing_path_fails_the_artifact(tmp_path):
    svc = ConfigsService("configs", ConfigsConfig(kind="configs", paths=[str(tmp_path / "nope")]), LocalAccess())
    with pytest.raises(ArtifactError, match="do not exist"):
        svc.backup(tmp_path)
    assert not (tmp_path / "configs.tar.gz").exists()


def test_a_configured_path_that_is_a_link_is_followed(tmp_path):
    """/opt/coderz/configs -> a git checkout: the files are archived, not just the link."""
    real = _tree(tmp_path / "checkout")
    link = tmp_path / "configs-link"
    os.symlink(real, link)
    svc = ConfigsService("configs", ConfigsConfig(kind="configs", paths=[str(link)]), LocalAccess())
    snap = tmp_path / "snap"
    snap.mkdir()
    [res] = svc.backup(snap)
    assert res.details["files"] >= 5
    target = tmp_path / "restore"
    target.mkdir()
    svc.restore(snap / "configs.tar.gz", target=target)
    assert (target / str(link).lstrip("/") / "docker-compose.yml").read_text() == "services: {}\n"


@pytest.mark.parametrize("case", ["all-excluded", "only-empty-dirs"])
def test_an_archive_without_files_is_not_a_backup(tmp_path, case):
    conf = tmp_path / "configs"
    (conf / "empty" / "deeper").mkdir(parents=True)
    if case == "all-excluded":
        (conf / "app.log").write_text("x")
    svc = ConfigsService("configs", ConfigsConfig(kind="configs", paths=[str(conf)], exclude=["*.log"]),
                         LocalAccess())
    snap = tmp_path / "snap"
    snap.mkdir()
    with pytest.raises(ArtifactError, match="no files to archive"):
        svc.backup(snap)
    assert list(snap.iterdir()) == []


def _evil_tarball(path, members):
    import gzip

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = b"pwned\n"
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.SYMTYPE
                info.linkname = target
                tar.addfile(info)
    path.write_bytes(gzip.compress(buf.getvalue()))


@pytest.mark.parametrize("members", [
    [("opt/ok.txt", "file", None), ("../../escape.txt", "file", None)],
    [("/abs/escape.txt", "file", None)],
    [("opt/link", "link", "/etc"), ("opt/link/passwd", "file", None)],
    [("opt/up", "link", "../../.."), ],
])
def test_restore_refuses_unsafe_archives_and_writes_nothing(tmp_path, members):
    evil = tmp_path / "configs.tar.gz"
    _evil_tarball(evil, members)
    target = tmp_path / "target"
    target.mkdir()
    svc = ConfigsService("configs", ConfigsConfig(kind="configs", paths=["/x"]), LocalAccess())
    with pytest.raises(RestoreError, match="nothing changed"):
        svc.restore(evil, target=target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()
    with pytest.raises(VerifyError):
        svc.verify(evil)


# -- confinement: a hostile archive writes nothing outside the configured paths ---------------

CONF = "/opt/coderz/configs"


def _archive(path, members):
    """members: (kind, name, data-or-linkname) with kind file | dir | sym | hard, gzipped."""
    import gzip

    from helpers import tar_bytes

    path.write_bytes(gzip.compress(tar_bytes([(k, n, d or "") for k, n, d in members])))


def _svc():
    return ConfigsService("configs", ConfigsConfig(kind="configs", paths=[CONF]), LocalAccess())


BASE = [("dir", "opt/coderz/configs", None), ("file", "opt/coderz/configs/app.yml", "new\n")]


@pytest.mark.parametrize("extra, why", [
    ([("dir", "etc", None), ("file", "etc/cron.d", "* * * * * root sh -c evil\n")], "not under the configured paths"),
    ([("file", "opt/coderz/configs-other/x", "x")], "not under the configured paths"),
    ([("hard", "opt/coderz/configs/h", "etc/shadow")], "must point to a file earlier in the same archive"),
    ([("hard", "opt/coderz/configs/h", "opt/coderz/configs/later"), ("file", "opt/coderz/configs/later", "x")],
     "must point to a file earlier"),
    ([("sym", "opt/coderz/configs/up", "../../../etc")], "outside the configured path"),
    ([("sym", "opt/coderz/configs/abs", "/etc/passwd")], "outside the configured path"),
    ([("sym", "opt/coderz/configs/l", "."), ("file", "opt/coderz/configs/l/x", "x")], "through the symlink"),
    ([("file", "opt/coderz/configs/nodir/x", "x")], "its folder is not in the archive before it"),
])
def test_verify_and_restore_refuse_the_same_hostile_archives_and_nothing_changes(tmp_path, extra, why):
    evil = tmp_path / "configs.tar.gz"
    _archive(evil, BASE + extra)
    target = tmp_path / "root"
    (target / "etc").mkdir(parents=True)
    (target / "etc" / "shadow").write_text("root:secret\n")
    conf = target / CONF.lstrip("/")
    conf.mkdir(parents=True)
    (conf / "app.yml").write_text("old\n")
    before = _listing(tmp_path)
    with pytest.raises(VerifyError, match=why):
        _svc().verify(evil)
    with pytest.raises(RestoreError, match=f"nothing changed.*{why}"):
        _svc().restore(evil, target=target)
    assert _listing(tmp_path) == before


def test_restore_never_writes_through_links_already_on_disk(tmp_path):
    """What is at a member's place on this host is replaced, never written through: a symlink
    to a file elsewhere, a file hard-linked to one elsewhere, a folder that is a symlink."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "target.txt").write_text("keep me\n")
    (outside / "hard.txt").write_text("keep me too\n")
    (outside / "dir" / "f").write_text("untouched\n")
    target = tmp_path / "root"
    conf = target / CONF.lstrip("/")
    conf.mkdir(parents=True)
    os.symlink(outside / "target.txt", conf / "app.yml")
    os.link(outside / "hard.txt", conf / "hard.yml")
    os.symlink(outside / "dir", conf / "sub")
    evil = tmp_path / "configs.tar.gz"
    _archive(evil, BASE + [("file", "opt/coderz/configs/hard.yml", "restored\n"),
                           ("dir", "opt/coderz/configs/sub", None), ("file", "opt/coderz/configs/sub/f", "restored\n"),
                           ("hard", "opt/coderz/configs/copy.yml", "opt/coderz/configs/app.yml")])
    before = _listing(outside)
    assert "entries" in _svc().verify(evil)
    _svc().restore(evil, target=target)
    assert _listing(outside) == before
    assert not (conf / "app.yml").is_symlink() and (conf / "app.yml").read_text() == "new\n"
    assert (conf / "hard.yml").read_text() == "restored\n" and os.stat(conf / "hard.yml").st_nlink == 1
    assert not (conf / "sub").is_symlink() and (conf / "sub" / "f").read_text() == "restored\n"
    assert os.path.samefile(conf / "copy.yml", conf / "app.yml")   # the archive's own hard link


def test_an_absolute_link_inside_the_configured_path_verifies_and_restores(tmp_path):
    """verify == restore also for what is allowed: a link into the same configured path."""
    evil = tmp_path / "configs.tar.gz"
    _archive(evil, BASE + [("sym", "opt/coderz/configs/current.yml", "/opt/coderz/configs/app.yml"),
                           ("sym", "opt/coderz/configs/rel.yml", "app.yml")])
    target = tmp_path / "root"
    target.mkdir()
    assert "4 entries" in _svc().verify(evil)
    _svc().restore(evil, target=target)
    assert os.readlink(target / "opt/coderz/configs/current.yml") == "/opt/coderz/configs/app.yml"


def test_a_file_where_the_archive_has_a_folder_is_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "root"
    conf = target / CONF.lstrip("/")
    conf.mkdir(parents=True)
    (conf / "sub").write_text("a file here\n")
    evil = tmp_path / "configs.tar.gz"
    _archive(evil, BASE + [("dir", "opt/coderz/configs/sub", None), ("file", "opt/coderz/configs/sub/f", "x")])
    before = _listing(tmp_path)
    with pytest.raises(RestoreError, match="nothing changed.*is a file on this host, the archive has a folder"):
        _svc().restore(evil, target=target)
    assert _listing(tmp_path) == before


def test_a_destination_inside_a_configured_path_is_left_out_and_said_so(tmp_path, caplog):
    """dest = /opt/coderz/configs/backups (or its safety-backups): the archive must not take in
    the snapshots, tonight's half-written dump included."""
    import logging

    conf = tmp_path / "configs"
    conf.mkdir()
    (conf / "app.yml").write_text("a: 1\n")
    dest = conf / "backups"
    for into in (dest / ".in-progress-2026-03-06_03-00-00", dest / "safety-backups" / ".in-progress-x"):
        into.mkdir(parents=True)
        (into / "postgres.sql.gz").write_bytes(b"half-written")
        (dest / "2026-03-05_03-00-00").mkdir(exist_ok=True)
        (dest / "2026-03-05_03-00-00" / "redis.rdb").write_bytes(b"yesterday")
        svc = ConfigsService("configs", ConfigsConfig(kind="configs", paths=[str(conf)]), LocalAccess())
        with caplog.at_level(logging.WARNING):
            [res] = svc.backup(into)
        with tarfile.open(into / "configs.tar.gz") as tar:
            names = tar.getnames()
        assert str(conf / "app.yml").lstrip("/") in names
        assert not [n for n in names if "backups" in n], names
        assert f"the snapshot destination {dest} is inside the configured path {conf}" in caplog.text
