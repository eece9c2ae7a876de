"""Off-site copies to S3 (``kind = "s3"``) against a real S3 server (SeaweedFS): through the real
backup flow and the CLI as an operator uses them, and the target's own calls where the store's
answers matter (a check that fails, a listing over many pages, Object Lock)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import refused_port, run_cli

from coderz_backup.errors import OffsiteError
from coderz_backup.offsite import complete_snapshots, create
from coderz_backup.offsite.s3 import S3TargetConfig
from coderz_backup.signing import SIGNATURE_FILE
from coderz_backup.snapshot import MANIFEST

PREFIX = "coderz/"


def _with_s3(stack, seaweed, bucket, *, endpoint=None, secret=None, extra="") -> None:
    stack.env.update(T_S3_KEY=seaweed.access_key, T_S3_SECRET=secret or seaweed.secret_key)
    stack.config.write_text(stack.config.read_text() + (
        f'\n[offsite.cloud]\nkind = "s3"\nbucket = "{bucket}"\nendpoint_url = "{endpoint or seaweed.endpoint}"\n'
        f'access_key_id = "env:T_S3_KEY"\nsecret_access_key = "env:T_S3_SECRET"\n{extra}'))


def _backup(stack):
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    return res, stack.snapshots()[-1]


def _objects(seaweed, bucket, prefix) -> dict[str, dict]:
    pages = seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):]: o for p in pages for o in p.get("Contents") or []}


def _files(snap) -> list[str]:
    out = []
    for entry in json.loads((snap / MANIFEST).read_text())["artifacts"]:
        out += [rec["path"] for rec in entry["files"] or [entry]]
    return out


def _target(seaweed, bucket, **over):
    cfg = dict(kind="s3", bucket=bucket, endpoint_url=seaweed.endpoint, access_key_id=seaweed.access_key,
               secret_access_key=seaweed.secret_key)
    cfg.update(over)
    return create("cloud", S3TargetConfig(**cfg))


# -- through the backup flow and the CLI ----------------------------------------------------


def test_a_backup_lands_complete_in_the_bucket_and_is_listed(stack, seaweed):
    bucket = seaweed.make_bucket()
    _with_s3(stack, seaweed, bucket)
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    objects = _objects(seaweed, bucket, f"{PREFIX}{snap.name}/")
    assert sorted(objects) == sorted(_files(snap) + ["backup.log", MANIFEST, SIGNATURE_FILE])
    cl = seaweed.client()
    for rel in (MANIFEST, SIGNATURE_FILE, *_files(snap)):
        body = cl.get_object(Bucket=bucket, Key=f"{PREFIX}{snap.name}/{rel}")["Body"].read()
        assert body == (snap / rel).read_bytes(), rel
    # the signature is written last
    assert objects[SIGNATURE_FILE]["LastModified"] == max(o["LastModified"] for o in objects.values())
    head = cl.head_object(Bucket=bucket, Key=f"{PREFIX}{snap.name}/{MANIFEST}", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256((snap / MANIFEST).read_bytes()).digest()).decode()
    assert head["Metadata"]["sha256"] == hashlib.sha256((snap / MANIFEST).read_bytes()).hexdigest()
    assert "✓ cloud: " in res.stdout and f"s3://{bucket}/{PREFIX} at {seaweed.endpoint}" in res.stdout
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert json.loads(listed.stdout) == {"cloud": [snap.name]}
    again = run_cli(["offsite", "push", "--config", str(stack.config)], stack.env)
    assert again.returncode == 0 and "already on" in again.stdout


def test_a_wrong_secret_key_says_to_check_the_credentials_and_never_shows_it(stack, seaweed):
    bucket = seaweed.make_bucket()
    wrong = secrets.token_urlsafe(30)[:40]
    _with_s3(stack, seaweed, bucket, secret=wrong)
    res, snap = _backup(stack)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ cloud: " in res.stdout and "check access_key_id/secret_access_key" in res.stdout
    log = (snap / "backup.log").read_text()
    for text in (res.stdout, res.stderr, log):
        assert wrong not in text and seaweed.secret_key not in text
    # the local snapshot is as it was: finished, latest, and it verifies
    assert (stack.dest / "latest").resolve() == snap and (snap / SIGNATURE_FILE).is_file()
    verify = run_cli(["verify", snap.name, "--config", str(stack.config)], stack.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert _objects(seaweed, bucket, "") == {}
    listed = run_cli(["offsite", "list", "--config", str(stack.config)], stack.env)
    assert listed.returncode == 2 and "check access_key_id/secret_access_key" in listed.stderr
    assert wrong not in listed.stdout + listed.stderr


def test_fetch_refuses_a_tampered_object_and_brings_back_an_intact_snapshot(stack, seaweed, tmp_path):
    bucket = seaweed.make_bucket()
    _with_s3(stack, seaweed, bucket)
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    new_host = tmp_path / "new-host"
    fetched = run_cli(["fetch", snap.name, "--from", "cloud", "--dest", str(new_host), "--config", str(stack.config)],
                      stack.env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    verify = run_cli(["verify", snap.name, "--dest", str(new_host), "--config", str(stack.config)], stack.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # the bucket is hostile: one artifact replaced (same size, one bit flipped)
    rel = next(p for p in _files(snap) if p.endswith(".sql.gz"))
    key = f"{PREFIX}{snap.name}/{rel}"
    cl = seaweed.client()
    raw = bytearray(cl.get_object(Bucket=bucket, Key=key)["Body"].read())
    raw[len(raw) // 2] ^= 0x01
    cl.put_object(Bucket=bucket, Key=key, Body=bytes(raw))
    other = tmp_path / "other-host"
    refused = run_cli(["fetch", snap.name, "--from", "cloud", "--dest", str(other), "--config", str(stack.config)],
                      stack.env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "sha256 differs from the manifest" in refused.stderr and "refused, nothing kept" in refused.stderr
    assert not [p for p in other.iterdir() if not p.name.startswith(".coderz-backup.lock")]


def test_an_unreachable_endpoint_makes_the_run_a_warning_with_a_clear_message(stack, seaweed):
    port = refused_port()
    _with_s3(stack, seaweed, "coderz-nowhere", endpoint=f"http://127.0.0.1:{port}")
    res, snap = _backup(stack)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ cloud: " in res.stdout and f"cannot reach http://127.0.0.1:{port}" in res.stdout
    assert (stack.dest / "latest").resolve() == snap and (snap / SIGNATURE_FILE).is_file()
    listed = run_cli(["offsite", "list", "--config", str(stack.config)], stack.env)
    assert listed.returncode == 2 and f"cannot reach http://127.0.0.1:{port}" in listed.stderr


def test_a_file_larger_than_a_part_goes_multipart_and_arrives_verified(stack, seaweed, tmp_path):
    bucket = seaweed.make_bucket()
    (stack.root / "opt" / "coderz" / "configs" / "blob.bin").write_bytes(os.urandom(12 << 20))   # incompressible
    _with_s3(stack, seaweed, bucket, extra="part_size_mb = 5\nmax_concurrency = 3\n")
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    big = [p for p in _files(snap) if (snap / p).stat().st_size > 10 << 20]
    assert big, "the configs artifact should be larger than 10 MB"
    head = seaweed.client().head_object(Bucket=bucket, Key=f"{PREFIX}{snap.name}/{big[0]}", ChecksumMode="ENABLED")
    parts = -(-(snap / big[0]).stat().st_size // (5 << 20))
    assert head["ChecksumSHA256"].endswith(f"-{parts}")   # a composite: it went in parts
    new_host = tmp_path / "new-host"
    fetched = run_cli(["fetch", snap.name, "--from", "cloud", "--dest", str(new_host), "--config", str(stack.config)],
                      stack.env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    verify = run_cli(["verify", snap.name, "--dest", str(new_host), "--config", str(stack.config)], stack.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert (new_host / snap.name / big[0]).read_bytes() == (snap / big[0]).read_bytes()


# -- the target's own calls against the store ----------------------------------------------


@pytest.mark.parametrize("size", [3, 6 << 20], ids=["one-part", "multipart"])
def test_a_file_that_does_not_match_its_sha256_is_not_kept(seaweed, tmp_path, size):
    bucket = seaweed.make_bucket()
    target = _target(seaweed, bucket, part_size_mb=5)
    src = tmp_path / "f"
    src.write_bytes(os.urandom(size))
    with pytest.raises(OffsiteError, match="not kept"):
        target.put("2026-12-01_03-00-00/f", src, size=size, sha256=hashlib.sha256(b"other").hexdigest())
    assert _objects(seaweed, bucket, "") == {}
    target.put("2026-12-01_03-00-00/f", src, size=size, sha256=hashlib.sha256(src.read_bytes()).hexdigest())
    with target.open("2026-12-01_03-00-00/f") as fh:
        assert fh.read() == src.read_bytes()
    with pytest.raises(OffsiteError, match="to upload it as 2026-12-01_03-00-00/g failed: No such file"):
        target.put("2026-12-01_03-00-00/g", tmp_path / "missing", size=size, sha256=hashlib.sha256(b"").hexdigest())


def test_names_pages_through_long_listings_and_missing_things_say_so(seaweed):
    bucket = seaweed.make_bucket()
    target = _target(seaweed, bucket, prefix="host-a")
    assert target.prefix == "host-a/" and target.names() == []
    cl = seaweed.client()
    keys = [f"host-a/2026-12-01_03-00-00/f{i:04d}" for i in range(1010)] + ["host-a/2026-12-02_03-00-00/x/y",
                                                                            "host-b/2026-12-03_03-00-00/z"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: cl.put_object(Bucket=bucket, Key=k, Body=b"."), keys))
    assert target.names() == ["2026-12-01_03-00-00", "2026-12-02_03-00-00"]
    assert len(target.names("2026-12-01_03-00-00")) == 1010
    assert target.names("2026-12-02_03-00-00") == ["x"] and target.names("nothing") == []
    assert target.exists("2026-12-02_03-00-00/x/y") and not target.exists("2026-12-02_03-00-00/x")
    with pytest.raises(OffsiteError, match="not there"), target.open("2026-12-02_03-00-00/nope"):
        pass
    target.remove("2026-12-01_03-00-00")          # more than one delete batch
    assert target.names() == ["2026-12-02_03-00-00"]
    with pytest.raises(OffsiteError, match="bucket nope-missing does not exist"):
        complete_snapshots(_target(seaweed, "nope-missing"))


def test_remove_on_an_object_lock_bucket_keeps_the_locked_version_and_logs_a_refusal(seaweed, caplog):
    bucket = seaweed.make_bucket(object_lock=True)
    target = _target(seaweed, bucket)
    cl = seaweed.client()
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    locked = cl.put_object(Bucket=bucket, Key=f"{PREFIX}2026-12-01_03-00-00/db.sql.gz", Body=b"locked",
                           ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
    cl.put_object(Bucket=bucket, Key=f"{PREFIX}2026-12-01_03-00-00/backup.log", Body=b"log")
    # remove() deletes the current objects: on a versioned bucket that is delete markers, never refused
    target.remove("2026-12-01_03-00-00")
    assert target.names() == []
    versions = cl.list_object_versions(Bucket=bucket, Prefix=PREFIX).get("Versions") or []
    assert locked["VersionId"] in [v["VersionId"] for v in versions]     # the lock still holds the data
    # what the store refuses (deleting the locked version itself): one log line, no exception storm
    free = cl.put_object(Bucket=bucket, Key=f"{PREFIX}2026-12-01_03-00-00/other", Body=b"free")
    with caplog.at_level(logging.WARNING, logger="coderz_backup.offsite.s3"):
        deleted = target._delete([{"Key": f"{PREFIX}2026-12-01_03-00-00/db.sql.gz", "VersionId": locked["VersionId"]},
                                  {"Key": f"{PREFIX}2026-12-01_03-00-00/other", "VersionId": free["VersionId"]}],
                                 "2026-12-01_03-00-00/")
    assert deleted == 1
    refusals = [r for r in caplog.records if "the store keeps" in r.getMessage()]
    assert len(refusals) == 1 and "db.sql.gz" in refusals[0].getMessage() and "AccessDenied" in refusals[0].getMessage()
    with pytest.raises(OffsiteError, match="none of the 1 object"):
        target._delete([{"Key": f"{PREFIX}2026-12-01_03-00-00/db.sql.gz", "VersionId": locked["VersionId"]}],
                       "2026-12-01_03-00-00/")


def test_an_endpoint_that_never_answers_times_out_with_a_clear_message(seaweed, tmp_path):
    import socket
    import time

    with socket.socket() as silent:       # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        target = _target(seaweed, "coderz-silent", endpoint_url=f"http://127.0.0.1:{port}", timeout_s=1)
        started = time.monotonic()
        with pytest.raises(OffsiteError, match=r"did not answer in time \(1 s to connect, 1 s per read"):
            target.names()
        assert time.monotonic() - started < 30


def test_an_encrypted_copy_restores_the_whole_stack_on_a_new_host_with_only_config_key_and_identity(
        stack, seaweed, tmp_path, redis_server):
    """Disaster recovery as the README's runbook has it: the old host is gone; a new host has the
    config, the old host's public key in trusted_keys and the age identity — nothing else."""
    from pyrage import x25519

    from coderz_backup.offsite.crypt import AGE_MAGIC

    ident = x25519.Identity.generate()
    identity_file = tmp_path / "age-identity.txt"
    identity_file.write_text(f"{ident}\n")
    stack.config.write_text(stack.config.read_text().replace(
        f'data_dir = "{redis_server.data}"\n',
        f'data_dir = "{redis_server.data}"\nstart_command = {json.dumps(redis_server.start_command)}\n'))
    bucket = seaweed.make_bucket()
    _with_s3(stack, seaweed, bucket, extra=f'encrypt_to = ["{ident.to_public()}"]\n')
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    # nothing readable left the host: every object but the signature is age ciphertext
    cl = seaweed.client()
    objects = _objects(seaweed, bucket, f"{PREFIX}{snap.name}/")
    assert sorted(objects) == sorted(_files(snap) + ["backup.log", MANIFEST, SIGNATURE_FILE])
    for rel in objects:
        body = cl.get_object(Bucket=bucket, Key=f"{PREFIX}{snap.name}/{rel}")["Body"].read()
        if rel == SIGNATURE_FILE:
            assert body == (snap / rel).read_bytes()
        else:
            assert body.startswith(AGE_MAGIC) and b"postgres-prefect" not in body, rel
    old_key = run_cli(["key", "show", "--config", str(stack.config)], stack.env).stdout.strip().splitlines()[-1]
    assert old_key.startswith("ed25519:")

    # the old host is lost: its data changes after the backup, its snapshots and its signing key are gone
    a, b = stack.dbs
    with a.connect() as c:
        c.execute("DELETE FROM flow_run WHERE id > 10")
    with b.connect() as c:
        c.execute("DROP TABLE users")
    redis_server.client().set("k", "changed")
    new_dest = tmp_path / "new-host" / "snapshots"
    new_env = dict(stack.env, CODERZ_BACKUP_SIGNING_KEY=str(tmp_path / "new-host" / "keys" / "signing.key"))
    new_config = tmp_path / "new-host.toml"
    new_config.write_text(stack.config.read_text().replace(f'dest = "{stack.dest}"', f'dest = "{new_dest}"')
                          .replace("retries = 1", f'retries = 1\ntrusted_keys = ["{old_key}"]'))
    # without the identity: refused before anything changes
    no_id = run_cli(["restore", "--from", "cloud", "--yes", "--config", str(new_config)], new_env)
    assert no_id.returncode == 2 and "is encrypted (age): give the identity" in no_id.stderr, no_id.stderr
    res = run_cli(["restore", "--from", "cloud", "--identity", str(identity_file), "--yes",
                   "--config", str(new_config)], new_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"✓ {snap.name} fetched from cloud" in res.stdout
    assert f"signature ok (trusted key {old_key[:20]}" in res.stdout
    with a.connect() as c:
        assert c.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 3000
    with b.connect() as c:
        assert c.execute("SELECT count(*) FROM users").fetchone()[0] == 3000
    assert redis_server.client().get("k") in ("v", b"v")
    # the fetched snapshot is a plain local snapshot now, byte for byte the old host's
    for rel in _files(snap) + [MANIFEST, SIGNATURE_FILE]:
        assert (new_dest / snap.name / rel).read_bytes() == (snap / rel).read_bytes(), rel
    assert str(ident) not in res.stdout + res.stderr


def _save_credentials_block(name: str, slug: str, data: dict) -> None:
    """Save a block document the way the Prefect UI's form does (the server knows the prefect-aws
    block types from its own collection registry; prefect-aws itself is not installed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate

    with get_client(sync_client=True) as c:
        block_type = c.read_block_type_by_slug(slug)
        schema = c.get_most_recent_block_schema_for_block_type(block_type.id)
        c.create_block_document(BlockDocumentCreate(name=name, data=data, block_type_id=block_type.id,
                                                    block_schema_id=schema.id))


@pytest.mark.parametrize("slug", ["aws-credentials", "minio-credentials"])
def test_credentials_from_a_saved_prefect_block_reach_the_bucket_and_a_missing_block_says_so(stack, seaweed, slug):
    bucket = seaweed.make_bucket()
    name = f"coderz-s3-{secrets.token_hex(3)}"
    keys = ({"aws_access_key_id": seaweed.access_key, "aws_secret_access_key": seaweed.secret_key}
            if slug == "aws-credentials" else
            {"minio_root_user": seaweed.access_key, "minio_root_password": seaweed.secret_key})
    _save_credentials_block(name, slug, {**keys, "region_name": "us-east-1",
                                         "aws_client_parameters": {"endpoint_url": seaweed.endpoint}})
    stack.config.write_text(stack.config.read_text() + (
        f'\n[offsite.cloud]\nkind = "s3"\nbucket = "{bucket}"\ncredentials_block = "{name}"\n'))
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"s3://{bucket}/{PREFIX} at {seaweed.endpoint}" in res.stdout
    assert sorted(_objects(seaweed, bucket, f"{PREFIX}{snap.name}/")) == sorted(
        _files(snap) + ["backup.log", MANIFEST, SIGNATURE_FILE])
    assert seaweed.secret_key not in res.stdout + res.stderr + (snap / "backup.log").read_text()

    stack.config.write_text(stack.config.read_text().replace(f'credentials_block = "{name}"',
                                                             'credentials_block = "no-such-block"'))
    res, _ = _backup(stack)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no aws-credentials or minio-credentials block named 'no-such-block'" in res.stdout
