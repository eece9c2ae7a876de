"""The artifact reader mirrors the writer: what was written reads back, anything else is refused.

No servers: real files in a temp folder, written with the real writer.
"""

from __future__ import annotations

import io
import os
from coderz_backup.tarfile_compat import tarfile

import pytest

from coderz_backup.codecs import chain_for
from coderz_backup.errors import RestoreError, VerifyError
from coderz_backup.reader import SnapshotReader, as_artifact
from coderz_backup.services.configs import ConfigsConfig, ConfigsService
from coderz_backup.writer import write_stream

DATA = b"".join(b"line %d of a dump\n" % i for i in range(50_000))


def _snapshot(tmp_path, files: dict[str, bytes]):
    """A snapshot folder with ``files`` written by the writer, and its manifest."""
    entries = []
    for rel, data in files.items():
        rec = write_stream(tmp_path, rel, [data[i:i + 65536] for i in range(0, len(data), 65536)])
        entries.append({"service": "s", "kind": "k", "status": "ok", **rec.as_manifest(), "files": []})
    return SnapshotReader(tmp_path, {"artifacts": entries}), entries


def test_a_gzip_artifact_reads_back_decoded(tmp_path):
    reader, (entry,) = _snapshot(tmp_path, {"db.sql.gz": DATA})
    assert (tmp_path / "db.sql.gz").read_bytes()[:2] == b"\x1f\x8b"   # stored compressed
    assert reader.artifact(entry).read_bytes() == DATA


def test_a_changed_byte_is_refused_with_the_manifest_mismatch(tmp_path):
    reader, (entry,) = _snapshot(tmp_path, {"plain.rdb": DATA})
    raw = bytearray((tmp_path / "plain.rdb").read_bytes())
    raw[1000] ^= 1
    (tmp_path / "plain.rdb").write_bytes(bytes(raw))
    with pytest.raises(VerifyError, match="sha256 differs from the manifest"):
        reader.artifact(entry).read_bytes()


def test_a_damaged_gzip_is_reported_as_changed_bytes_not_as_a_format_error(tmp_path):
    reader, (entry,) = _snapshot(tmp_path, {"db.sql.gz": DATA})
    raw = bytearray((tmp_path / "db.sql.gz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "db.sql.gz").write_bytes(bytes(raw))
    with pytest.raises(VerifyError, match="sha256 differs"):
        reader.artifact(entry).read_bytes()


def test_a_file_of_another_size_is_refused_before_anything_is_read(tmp_path):
    reader, (entry,) = _snapshot(tmp_path, {"plain.rdb": DATA})
    with open(tmp_path / "plain.rdb", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(VerifyError, match=f"{len(DATA) + 1} bytes on disk, the manifest says {len(DATA)}"):
        reader.presence(entry)


def test_a_tar_read_only_to_its_end_marker_still_has_its_tail_checked(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    reader, (entry,) = _snapshot(tmp_path, {"x.tar.gz": buf.getvalue()})
    # same size, other bytes after the gzip stream's data: tarfile never reads that far itself
    path = tmp_path / "x.tar.gz"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1   # the gzip trailer's size field
    path.write_bytes(bytes(raw))
    with pytest.raises(VerifyError, match="sha256 differs"):
        with reader.artifact(entry).open() as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            assert [m.name for m in tar] == ["a.txt"]


def test_only_files_the_manifest_lists_exist_in_a_folder_artifact(tmp_path):
    reader, _ = _snapshot(tmp_path, {"grafana/dashboards/a.json": b"{}", "grafana/index.json": b"{}"})
    (tmp_path / "grafana" / "dashboards" / "planted.json").write_bytes(b'{"evil": 1}')
    folder = reader.artifact("grafana/dashboards")
    assert [p.name for p in folder.iterdir()] == ["a.json"]
    assert not (folder / "planted.json").exists()
    with pytest.raises(FileNotFoundError):
        (folder / "planted.json").read_bytes()
    assert (folder.parent / "index.json").read_text() == "{}"


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "a/../../b", ""])
def test_a_manifest_path_leaving_the_snapshot_folder_is_refused(tmp_path, bad):
    with pytest.raises(VerifyError, match="path"):
        SnapshotReader(tmp_path, {"artifacts": [{"status": "ok", "path": bad, "bytes": 1, "sha256": "0"}]})


def test_a_symlinked_folder_in_the_snapshot_is_not_followed(tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    reader, (entry,) = _snapshot(snap, {"grafana/index.json": b"{}"})
    elsewhere = tmp_path / "elsewhere"
    (snap / "grafana").rename(elsewhere)
    os.symlink(elsewhere, snap / "grafana")
    with pytest.raises(VerifyError, match="missing from"):
        reader.artifact(entry).read_bytes()


def test_check_reads_every_file_of_an_entry(tmp_path):
    reader, (entry,) = _snapshot(tmp_path, {"plain.rdb": DATA})
    reader.check(entry)
    (tmp_path / "plain.rdb").write_bytes(DATA[::-1])
    with pytest.raises(VerifyError, match="sha256 differs"):
        reader.check(entry)


def test_a_plain_path_outside_a_snapshot_is_read_as_it_is(tmp_path):
    rec = write_stream(tmp_path, "x.ndjson.gz", [DATA])
    art = as_artifact(tmp_path / rec.path)
    assert art.read_bytes() == DATA and art.name == "x.ndjson.gz"
    assert art.parent.is_dir() and (art.parent / "x.ndjson.gz").is_file()


def test_local_file_is_a_checked_private_copy_removed_afterwards(tmp_path):
    reader, (entry,) = _snapshot(tmp_path, {"etcd.snapshot": DATA})
    with reader.artifact(entry).local_file() as copy:
        assert copy.read_bytes() == DATA
        assert copy.parent != tmp_path and oct(copy.parent.stat().st_mode)[-3:] == "700"
    assert not copy.exists()


def test_as_tar_wraps_the_decoded_content_in_a_one_file_tar(tmp_path):
    reader, (entry,) = _snapshot(tmp_path, {"dump.rdb.gz": DATA})
    stream = b"".join(reader.artifact(entry).as_tar("dump.rdb", mode=0o660))
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.mode, tar.extractfile(member).read()) == ("dump.rdb", 0o660, DATA)


@pytest.mark.parametrize("name, codecs", [("a.sql.gz", ["gzip"]), ("configs.tar.gz", ["gzip"]),
                                          ("etcd.snapshot", []), ("grafana/index.json", []), (".gz", [])])
def test_the_codec_chain_follows_the_name(name, codecs):
    assert [c.name for c in chain_for(name)] == codecs


def test_a_restore_reads_through_the_reader_so_bytes_changed_after_the_verify_change_nothing(tmp_path):
    src = tmp_path / "src" / "opt" / "coderz" / "configs"
    src.mkdir(parents=True)
    (src / "app.env").write_text("A=1\n")
    svc = ConfigsService("configs", ConfigsConfig(kind="configs", paths=[str(src)]), None)
    snap = tmp_path / "snap"
    [result] = svc.backup(snap)
    entry = {**result.as_manifest(), "status": "ok"}
    reader = SnapshotReader(snap, {"artifacts": [entry]})
    assert "entries" in svc.verify(reader.artifact(entry))
    # the medium is changed between the verify and the restore: same size, other bytes
    raw = bytearray((snap / entry["path"]).read_bytes())
    raw[-9] ^= 0x55
    (snap / entry["path"]).write_bytes(bytes(raw))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises((RestoreError, VerifyError), match="sha256 differs"):
        svc.restore(reader.artifact(entry), target=target)
    assert list(target.iterdir()) == []
