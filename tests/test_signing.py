"""Signed manifests: a snapshot this host (or a trusted one) did not sign is refused.

The attacker here can write the backup destination: they change an artifact and re-hash the
manifest, remove the signature, or sign with a key of their own. Nothing on the host may change.
"""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from helpers import run_cli

from coderz_backup.errors import ConfigError, SignatureError
from coderz_backup.signing import SIGNATURE_FILE, authenticate, load_signer, parse_public_key


# -- the key ------------------------------------------------------------------------------


def test_the_key_is_created_once_private_and_refused_when_others_can_read_it(tmp_path):
    path = tmp_path / "keys" / "signing.key"
    first = load_signer(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    again = load_signer(str(path))
    assert again.public_key == first.public_key and first.public_key.startswith("ed25519:")
    parse_public_key(first.public_key)

    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable or writable by others \(mode 0644\); `chmod 600"):
        load_signer(str(path))
    path.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(ConfigError, match="not a link"):
        load_signer(str(link))
    (tmp_path / "junk.key").write_text("not a key")
    (tmp_path / "junk.key").chmod(0o600)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_signer(str(tmp_path / "junk.key"))


def test_the_key_can_live_in_a_prefect_secret_block(tmp_path):
    from prefect.blocks.system import Secret

    signer = load_signer(str(tmp_path / "k"))
    pem = (tmp_path / "k").read_text()
    Secret(value=pem).save("coderz-signing-key-test", overwrite=True)
    from_block = load_signer("prefect-secret:coderz-signing-key-test")
    assert from_block.public_key == signer.public_key
    assert from_block.where == "prefect-secret:coderz-signing-key-test"


def test_bad_trusted_keys_are_config_errors(tmp_path):
    from coderz_backup.config import load

    cfg = tmp_path / "c.toml"
    cfg.write_text('trusted_keys = ["ssh-ed25519 AAAA", "ed25519:!!!", "ed25519:' + base64.b64encode(b"x" * 31).decode()
                   + '"]\n')
    with pytest.raises(ConfigError) as err:
        load(cfg)
    text = str(err.value)
    assert "is not a public key of the form ed25519:<base64>" in text


# -- crafted snapshots, as an operator meets them (CLI) -----------------------------------


@pytest.fixture
def signed(stack):
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    stack.snap = stack.dest / os.readlink(stack.dest / "latest")
    return stack


def _tamper_redis(s) -> None:
    """What an attacker with write access to the folder does: replace redis.rdb and fix the
    manifest's size and sha256 so every hash matches again."""
    import hashlib

    rdb = s.snap / "redis.rdb"
    data = rdb.read_bytes().replace(b"v", b"X")
    rdb.write_bytes(data)
    m = json.loads((s.snap / "manifest.json").read_text())
    for a in m["artifacts"]:
        if a["path"] == "redis.rdb":
            a["bytes"], a["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (s.snap / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")


def test_backup_signs_and_key_show_prints_the_key_that_signed(signed):
    s = signed
    res = run_cli(["key", "show", "--config", str(s.config)], s.env)
    assert res.returncode == 0, res.stderr
    key = res.stdout.strip()
    assert key.startswith("ed25519:") and "private key" in res.stderr
    assert s.manifest()["signing_key"] == key
    doc = json.loads((s.snap / SIGNATURE_FILE).read_text())
    assert doc["key"] == key and stat.S_IMODE((s.snap / SIGNATURE_FILE).stat().st_mode) == 0o600
    v = run_cli(["verify", "--config", str(s.config)], s.env)
    assert v.returncode == 0 and f"✓ manifest.json — signature ok (this host {key})" in v.stdout, v.stdout
    vj = json.loads(run_cli(["verify", "--json", "--config", str(s.config)], s.env).stdout)
    assert vj["signed"] is True and vj["signing_key"] == key and vj["ok"] is True


def test_a_rehashed_manifest_is_refused_by_verify_and_restore_and_nothing_changes(signed):
    s = signed
    _tamper_redis(s)
    v = run_cli(["verify", "--config", str(s.config)], s.env)
    assert v.returncode == 2 and "the signature does not match manifest.json" in v.stderr, v.stdout + v.stderr
    # even with --allow-unsigned: a signature that does not match is never accepted
    v = run_cli(["verify", "--allow-unsigned", "--config", str(s.config)], s.env)
    assert v.returncode == 2 and "refused" in v.stderr
    before = sorted(p.name for p in s.dest.iterdir())
    r = run_cli(["restore", "--yes", "--config", str(s.config)], s.env)
    assert r.returncode == 2 and "the signature does not match manifest.json" in r.stderr, r.stdout + r.stderr
    assert sorted(p.name for p in s.dest.iterdir()) == before  # not even a safety backup


def test_an_unsigned_snapshot_needs_allow_unsigned_and_is_warned_about(signed, redis_server):
    s = signed
    (s.snap / SIGNATURE_FILE).unlink()
    v = run_cli(["verify", "--config", str(s.config)], s.env)
    assert v.returncode == 2 and "is not signed (manifest.json.sig missing): refused" in v.stderr
    assert "--allow-unsigned" in v.stderr
    r = run_cli(["restore", "--yes", "--only", "redis", "--config", str(s.config)], s.env)
    assert r.returncode == 2 and "is not signed" in r.stderr
    v = run_cli(["verify", "--allow-unsigned", "--config", str(s.config)], s.env)
    assert v.returncode == 0 and "⚠ manifest.json — UNSIGNED" in v.stdout, v.stdout

    s.config.write_text(s.config.read_text().replace(
        f'data_dir = "{redis_server.data}"\n',
        f'data_dir = "{redis_server.data}"\nstart_command = {json.dumps(redis_server.start_command)}\n'))
    redis_server.client().set("k", "changed")
    r = run_cli(["restore", "--yes", "--allow-unsigned", "--no-safety-backup", "--only", "redis",
                 "--config", str(s.config)], s.env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "⚠ **UNSIGNED" in r.stdout                    # the report says it
    log = (s.snap / "restore.log").read_text()
    assert "is UNSIGNED: accepted only because allow_unsigned is set" in log
    assert redis_server.client().get("k") == b"v"


def test_a_snapshot_signed_by_another_key_is_refused_until_that_key_is_trusted(signed, tmp_path):
    s = signed
    attacker = load_signer(str(tmp_path / "attacker.key"))
    _tamper_redis(s)
    (s.snap / SIGNATURE_FILE).write_bytes(attacker.signature_document((s.snap / "manifest.json").read_bytes()))
    v = run_cli(["verify", "--config", str(s.config)], s.env)
    assert v.returncode == 2 and f"is signed by {attacker.public_key}, which is neither this host's key nor in " \
                                 "trusted_keys: refused" in v.stderr, v.stderr

    # a replacement host that trusts the old host's key (here: that key) accepts its snapshots
    s.config.write_text(f'trusted_keys = ["{attacker.public_key}"]\n' + s.config.read_text())
    v = run_cli(["verify", "--config", str(s.config)], s.env)
    assert f"signature ok (trusted key {attacker.public_key})" in v.stdout, v.stdout + v.stderr


def test_signature_files_that_are_links_or_garbage_are_refused(signed, tmp_path):
    s = signed
    sig = s.snap / SIGNATURE_FILE
    good = sig.read_bytes()
    kwargs = dict(own_key=json.loads(good)["key"], trusted=[])
    manifest = (s.snap / "manifest.json").read_bytes()
    assert authenticate(s.snap, manifest, **kwargs).signed

    outside = tmp_path / "elsewhere.sig"
    outside.write_bytes(good)
    sig.unlink()
    sig.symlink_to(outside)
    with pytest.raises(SignatureError, match="cannot be read"):
        authenticate(s.snap, manifest, **kwargs)
    sig.unlink()
    for junk in (b"", b"{}", b'{"key": "ed25519:AAAA", "signature": "x"}', good.replace(b"ed25519", b"rsa")):
        sig.write_bytes(junk)
        with pytest.raises(SignatureError, match="not a valid signature"):
            authenticate(s.snap, manifest, **kwargs)
    sig.write_bytes(good)
    with pytest.raises(SignatureError, match="does not match"):
        authenticate(s.snap, manifest + b" ", **kwargs)
    with pytest.raises(SignatureError, match="missing or unreadable"):
        authenticate(s.snap, None, **kwargs)
