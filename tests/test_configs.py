"""Configs tree → configs.tar.gz: round trip, excludes, path safety."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from coderz_backup.access import LocalAccess
from coderz_backup.config import ConfigsConfig
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
