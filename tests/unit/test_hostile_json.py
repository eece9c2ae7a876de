"""Files on the backup medium are untrusted: a manifest, signature or post-snapshot record made of
deeply nested brackets (Python's JSON decoder raises RecursionError on it, not ValueError) is an
unreadable file like any other — never a crash of list, rotation, verify or retention."""

from __future__ import annotations

import datetime as dt

import pytest

from coderz_backup.errors import SignatureError
from coderz_backup.signing import SIGNATURE_FILE, authenticate, load_signer
from coderz_backup.snapshot import MANIFEST, SnapshotStore
from coderz_backup.stages import RECORD, read_record
from coderz_backup.writer import write_stream

NESTED = b"[" * 200_000


@pytest.fixture
def finished(tmp_path):
    signer = load_signer(str(tmp_path / "keys" / "signing.key"))
    store = SnapshotStore(tmp_path / "dest")
    store.prepare()
    snap = store.begin(dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.timezone.utc))
    rec = write_stream(snap.path, "db.sql.gz", [b"-- dump\n"])
    manifest = {"snapshot": snap.name, "status": "ok",
                "artifacts": [{"service": "db", "kind": "postgres", "status": "ok", **rec.as_manifest(), "files": []}]}
    return store, store.finish(snap, manifest, make_latest=True, signer=signer), signer


def test_a_nested_manifest_is_listed_as_unreadable(finished):
    store, folder, _ = finished
    (folder / MANIFEST).write_bytes(NESTED)
    [info] = store.list()
    assert info.name == folder.name and info.manifest is None


def test_a_nested_signature_is_refused_as_invalid(finished):
    _, folder, signer = finished
    (folder / SIGNATURE_FILE).write_bytes(NESTED[:60_000])
    with pytest.raises(SignatureError, match="is not a valid signature"):
        authenticate(folder, (folder / MANIFEST).read_bytes(), own_key=signer.public_key, trusted=[])


def test_a_nested_post_snapshot_record_is_ignored(finished):
    _, folder, _ = finished
    (folder / RECORD).write_bytes(NESTED)
    assert read_record(folder) is None
