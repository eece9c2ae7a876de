"""Off-site targets: what makes a remote copy complete, and what a hostile target cannot do."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from coderz_backup.errors import OffsiteError, SignatureError
from coderz_backup.offsite import complete_snapshots, create, fetch, push
from coderz_backup.offsite.dir import DirTargetConfig
from coderz_backup.signing import SIGNATURE_FILE, load_signer
from coderz_backup.snapshot import MANIFEST, SnapshotStore
from coderz_backup.writer import write_stream

T0 = dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def snapshot(tmp_path):
    signer = load_signer(str(tmp_path / "keys" / "signing.key"))
    store = SnapshotStore(tmp_path / "dest")
    store.prepare()
    snap = store.begin(T0)
    rec = write_stream(snap.path, "db.sql.gz", [b"-- dump\n" * 1000])
    manifest = {"snapshot": snap.name, "status": "ok",
                "artifacts": [{"service": "db", "kind": "postgres", "status": "ok", **rec.as_manifest(), "files": []}]}
    return store.finish(snap, manifest, make_latest=True, signer=signer), signer


@pytest.fixture
def target(tmp_path):
    (tmp_path / "drive").mkdir()
    return create("usb", DirTargetConfig(kind="dir", path=str(tmp_path / "drive")))


def test_a_copy_without_its_signature_is_not_complete(snapshot, target, tmp_path):
    folder, _ = snapshot
    push(folder, target)
    assert complete_snapshots(target) == [folder.name]
    (tmp_path / "drive" / folder.name / SIGNATURE_FILE).unlink()
    assert complete_snapshots(target) == []


def test_a_file_that_does_not_arrive_as_sent_is_not_kept(target, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    with pytest.raises(OffsiteError, match="not kept"):
        target.put("2026-12-01_03-00-00/f", src, size=3, sha256=hashlib.sha256(b"abd").hexdigest())
    assert not list((tmp_path / "drive").rglob("*f*"))


def test_another_snapshot_of_the_same_name_on_the_target_is_never_overwritten(snapshot, target, tmp_path):
    folder, _ = snapshot
    push(folder, target)
    remote = tmp_path / "drive" / folder.name / MANIFEST
    remote.write_text(remote.read_text() + " ")
    with pytest.raises(OffsiteError, match="holds another snapshot"):
        push(folder, target)


def test_a_path_leaving_the_target_folder_is_refused(target, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(Exception, match="outside"):
        target.put("../escape", src, size=1, sha256=hashlib.sha256(b"x").hexdigest())
    assert not (tmp_path / "escape").exists()


def test_fetch_refuses_a_copy_signed_by_an_unknown_key_and_keeps_nothing(snapshot, target, tmp_path):
    folder, _ = snapshot
    push(folder, target)
    stranger = load_signer(str(tmp_path / "other" / "signing.key"))
    with pytest.raises(SignatureError, match="neither this host's key nor in trusted_keys"):
        fetch(target, folder.name, tmp_path / "new", own_key=stranger.public_key, trusted=[])
    assert [p.name for p in (tmp_path / "new").iterdir()] == [".coderz-backup.lock"]


def test_fetch_with_the_key_brings_back_the_same_bytes(snapshot, target, tmp_path):
    folder, signer = snapshot
    push(folder, target)
    final, auth = fetch(target, folder.name, tmp_path / "new", own_key=signer.public_key, trusted=[])
    assert auth.own and (final / "db.sql.gz").read_bytes() == (folder / "db.sql.gz").read_bytes()


# -- kind "s3": its config (the store itself is tests/test_offsite_s3.py, against SeaweedFS) ------


def _s3_config(tmp_path, body: str):
    import textwrap

    from coderz_backup.config import load

    path = tmp_path / "coderz-backup.toml"
    path.write_text(f'dest = "{tmp_path / "dest"}"\n[offsite.cloud]\nkind = "s3"\n' + textwrap.dedent(body))
    return load(path, env={})


def test_an_s3_table_is_read_with_its_defaults_and_keeps_its_keys_secret(tmp_path):
    cfg = _s3_config(tmp_path, 'bucket = "backups"\naccess_key_id = "env:K"\nsecret_access_key = "sk-literal-value"\n')
    t = cfg.offsite["cloud"]
    assert (t.prefix, t.endpoint_url, t.region, t.part_size_mb, t.max_concurrency) == ("coderz/", None, "us-east-1",
                                                                                       64, 4)
    assert "sk-literal-value" not in repr(t) and "sk-literal-value" not in str(t.model_dump())
    target = create("cloud", t)
    assert target.describe() == "s3://backups/coderz/ at AWS S3 (us-east-1)"
    assert all(f.description for f in type(t).model_fields.values())


def test_an_s3_prefix_is_a_folder_and_keys_come_in_pairs(tmp_path):
    from coderz_backup.errors import ConfigError

    cfg = _s3_config(tmp_path, 'bucket = "bkt"\nprefix = "hosts/a"\nendpoint_url = "http://127.0.0.1:9000/"\n')
    assert cfg.offsite["cloud"].prefix == "hosts/a/" and cfg.offsite["cloud"].endpoint_url == "http://127.0.0.1:9000"
    for bad, says in (('prefix = "/abs/"', "no leading slash"), ('prefix = "a/../b/"', "no leading slash"),
                      ('access_key_id = "env:K"', "set both access_key_id and secret_access_key"),
                      ('endpoint_url = "minio:9000"', "endpoint_url starts with https://"),
                      ("part_size_mb = 1", "part_size_mb")):
        with pytest.raises(ConfigError, match=says):
            _s3_config(tmp_path, f'bucket = "bkt"\n{bad}\n')


def test_config_check_names_an_unset_offsite_secret_but_a_backup_does_not_wait_for_it(tmp_path, monkeypatch):
    from coderz_backup.config import load, secret_problems

    monkeypatch.delenv("T_NO_SUCH_KEY", raising=False)
    path = tmp_path / "c.toml"
    path.write_text('[offsite.cloud]\nkind = "s3"\nbucket = "coderz"\naccess_key_id = "env:T_NO_SUCH_KEY"\n'
                    'secret_access_key = "env:T_NO_SUCH_KEY"\n')
    cfg = load(path, env={})
    assert "offsite.cloud.access_key_id: environment variable T_NO_SUCH_KEY is not set" in \
        secret_problems(cfg, offsite=True)
    assert not any(p.startswith("offsite.") for p in secret_problems(cfg))
