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
    remote = tmp_path / "drive" / folder.name / SIGNATURE_FILE
    other = remote.read_bytes()[:-2] + b"AA"
    remote.write_bytes(other)
    with pytest.raises(OffsiteError, match="holds another snapshot"):
        push(folder, target)
    assert remote.read_bytes() == other


def test_a_copy_whose_manifest_was_damaged_is_sent_again(snapshot, target, tmp_path):
    folder, _ = snapshot
    push(folder, target)
    remote = tmp_path / "drive" / folder.name / MANIFEST
    remote.write_text(remote.read_text() + " ")
    res = push(folder, target)
    assert not res.already_there and res.details.get("replaced_damaged")
    assert remote.read_bytes() == (folder / MANIFEST).read_bytes()


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


# -- encryption (age) -------------------------------------------------------------------------

@pytest.fixture
def age_key(tmp_path):
    from pyrage import x25519

    ident = x25519.Identity.generate()
    path = tmp_path / "age.key"
    path.write_text(f"# created: test\n# public key: {ident.to_public()}\n{ident}\n")
    return str(ident.to_public()), path


def test_an_encrypted_copy_holds_no_plaintext_and_comes_back_identical_with_the_identity(snapshot, target, tmp_path,
                                                                                      age_key):
    from coderz_backup.offsite import identities
    from coderz_backup.offsite.crypt import AGE_MAGIC

    folder, signer = snapshot
    recipient, key_file = age_key
    cfg = DirTargetConfig(kind="dir", path=str(tmp_path / "drive"), encrypt_to=[recipient])
    res = push(folder, target, cfg.recipients())
    remote = tmp_path / "drive" / folder.name
    for f in remote.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            if f.name == SIGNATURE_FILE:   # the signature alone stays as signed
                assert data == (folder / SIGNATURE_FILE).read_bytes()
            else:
                assert data.startswith(AGE_MAGIC), f
                assert b"-- dump" not in data and folder.name.encode() not in data
    assert res.files == 3 and complete_snapshots(target) == [folder.name]
    assert not list((tmp_path / "dest").glob(".offsite-*")) and not list((tmp_path / "dest").glob(".coderz-push-*"))
    # a second push sees the copy is there without being able to read it (the host has no identity)
    assert push(folder, target, cfg.recipients()).already_there
    got, _ = fetch(target, folder.name, tmp_path / "new", own_key=signer.public_key, trusted=[],
                   identities=identities("usb", cfg, str(key_file)))
    for f in folder.iterdir():
        if f.is_file() and f.name != "post-snapshot.json":
            assert (got / f.name).read_bytes() == f.read_bytes(), f.name


def test_an_encrypted_copy_is_refused_without_the_right_identity_and_nothing_is_kept(snapshot, target, tmp_path,
                                                                                   age_key):
    from pyrage import x25519

    from coderz_backup.offsite import identities

    folder, signer = snapshot
    recipient, _ = age_key
    cfg = DirTargetConfig(kind="dir", path=str(tmp_path / "drive"), encrypt_to=[recipient])
    push(folder, target, cfg.recipients())
    with pytest.raises(OffsiteError, match=r"is encrypted \(age\): give the identity with --identity"):
        fetch(target, folder.name, tmp_path / "new", own_key=signer.public_key, trusted=[])
    other = tmp_path / "other.key"
    other.write_text(str(x25519.Identity.generate()) + "\n")
    with pytest.raises(OffsiteError, match="encrypted to other recipients"):
        fetch(target, folder.name, tmp_path / "new", own_key=signer.public_key, trusted=[],
              identities=identities("usb", cfg, str(other)))
    assert [p.name for p in (tmp_path / "new").iterdir()] == [".coderz-backup.lock"]


def test_a_changed_byte_in_an_encrypted_artifact_is_refused(snapshot, target, tmp_path, age_key):
    from coderz_backup.errors import VerifyError
    from coderz_backup.offsite import identities

    folder, signer = snapshot
    recipient, key_file = age_key
    cfg = DirTargetConfig(kind="dir", path=str(tmp_path / "drive"), encrypt_to=[recipient])
    push(folder, target, cfg.recipients())
    art = tmp_path / "drive" / folder.name / "db.sql.gz"
    data = bytearray(art.read_bytes())
    data[-40] ^= 0x01
    art.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="db.sql.gz: does not decrypt"):
        fetch(target, folder.name, tmp_path / "new", own_key=signer.public_key, trusted=[],
              identities=identities("usb", cfg, str(key_file)))
    assert [p.name for p in (tmp_path / "new").iterdir()] == [".coderz-backup.lock"]


def test_encrypt_to_takes_only_age_recipients_and_an_identity_file_never_shows_its_key(tmp_path):
    from pydantic import ValidationError

    from coderz_backup.errors import SecretError
    from coderz_backup.offsite.crypt import load_identities

    with pytest.raises(ValidationError, match="is not an age recipient"):
        DirTargetConfig(kind="dir", path="/x", encrypt_to=["AGE-SECRET-KEY-1ABC"])
    bad = tmp_path / "bad.key"
    bad.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(SecretError) as err:
        load_identities(str(bad), what="--identity")
    assert "NOTAKEY" not in str(err.value)


def test_a_staging_folder_left_by_a_killed_push_is_removed_by_the_next(snapshot, target, tmp_path, age_key):
    folder, _ = snapshot
    recipient, _ = age_key
    stale = tmp_path / "dest" / ".offsite-usb-999999999-abc"   # no such process
    stale.mkdir()
    (stale / "x.age").write_bytes(b"partial")
    cfg = DirTargetConfig(kind="dir", path=str(tmp_path / "drive"), encrypt_to=[recipient])
    push(folder, target, cfg.recipients())
    assert not stale.exists()


def test_an_s3_credentials_block_replaces_the_keys_never_joins_them(tmp_path):
    from coderz_backup.errors import ConfigError

    cfg = _s3_config(tmp_path, 'bucket = "backups"\ncredentials_block = "aws-credentials/coderz-s3"\n')
    assert cfg.offsite["cloud"].credentials_block == "aws-credentials/coderz-s3"
    with pytest.raises(ConfigError, match="credentials_block, not both"):
        _s3_config(tmp_path, 'bucket = "bkt"\ncredentials_block = "x"\naccess_key_id = "env:K"\n'
                             'secret_access_key = "env:S"\n')


def test_the_age_tool_decrypts_what_a_push_encrypted(snapshot, target, tmp_path, age_key):
    """The format is age's own: an operator can read a copy with the reference `age` command."""
    import shutil
    import subprocess

    folder, _ = snapshot
    recipient, key_file = age_key
    if shutil.which("age") is None:
        pytest.fail("Debian's age is not installed (scripts/test.sh installs it)")
    push(folder, target, DirTargetConfig(kind="dir", path=str(tmp_path / "drive"), encrypt_to=[recipient]).recipients())
    for rel in ("db.sql.gz", MANIFEST):
        out = subprocess.run(["age", "--decrypt", "--identity", str(key_file),
                              str(tmp_path / "drive" / folder.name / rel)], capture_output=True, check=True)
        assert out.stdout == (folder / rel).read_bytes(), rel


def test_bwlimit_holds_a_copy_to_the_rate_shared_by_parallel_files(tmp_path):
    """A lower bound only (a slow machine makes it pass sooner, never fail): four files of 256 KiB
    sent at once to a target limited to 256 KiB/s in all take about 4 s, not the 1 s each would."""
    import os
    import time
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "drive").mkdir()
    limited = create("usb", DirTargetConfig(kind="dir", path=str(tmp_path / "drive"), bwlimit_kbps=256))
    files = []
    for i in range(4):
        f = tmp_path / f"f{i}"
        f.write_bytes(os.urandom(256 * 1024))
        files.append((f, hashlib.sha256(f.read_bytes()).hexdigest()))
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda fs: limited.put(f"2026-12-01_03-00-00/{fs[0].name}", fs[0], size=256 * 1024,
                                             sha256=fs[1]), files))
    assert time.monotonic() - started >= 3.5
    for f, _ in files:
        assert (tmp_path / "drive" / "2026-12-01_03-00-00" / f.name).read_bytes() == f.read_bytes()


def test_a_full_local_disk_while_decrypting_is_a_disk_error_not_a_damaged_copy():
    """Writing the plaintext fails (here: /dev/full, ENOSPC): that is said as it is, never blamed
    on the off-site copy."""
    import errno
    import io
    import os

    from pyrage import encrypt, x25519

    from coderz_backup.offsite.crypt import decrypt_into

    ident = x25519.Identity.generate()
    ct = encrypt(os.urandom(3 << 20), [ident.to_public()])
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(OSError) as err:
        decrypt_into(io.BytesIO(ct), full, [ident], limit=None, where="x")
    assert err.value.errno == errno.ENOSPC


def test_an_unencrypted_push_leaves_no_folder_and_clears_one_a_killed_push_left(snapshot, target, tmp_path):
    folder, _ = snapshot
    stale = tmp_path / "dest" / ".offsite-usb-999999999-abc"   # no such process
    stale.mkdir()
    (stale / MANIFEST).write_bytes(b"{}")
    push(folder, target)
    assert not [p for p in (tmp_path / "dest").iterdir() if p.name.startswith(".offsite-")]
