"""authenticate(): which snapshot folders are trusted, built by hand on tmp dirs.

(tests/test_signing.py covers the key file, and the CLI on real backups; here each way a
signature can be missing, foreign, forged or damaged is one small case.)
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from coderz_backup.errors import SignatureError
from coderz_backup.signing import SIGNATURE_FILE, authenticate, load_signer, parse_public_key

MANIFEST = b'{\n  "status": "ok",\n  "artifacts": []\n}\n'


@pytest.fixture
def own(tmp_path):
    return load_signer(str(tmp_path / "keys" / "own.key"))


@pytest.fixture
def other(tmp_path):
    return load_signer(str(tmp_path / "keys" / "other.key"))


def signed_by(signer, tmp_path, manifest=MANIFEST):
    snap = tmp_path / "2026-03-06_03-00-00"
    snap.mkdir(exist_ok=True)
    (snap / "manifest.json").write_bytes(manifest)
    (snap / SIGNATURE_FILE).write_bytes(signer.signature_document(manifest))
    return snap


def refused(*args, **kwargs) -> str:
    with pytest.raises(SignatureError) as info:
        authenticate(*args, **kwargs)
    return str(info.value)


def test_a_snapshot_signed_by_this_host_is_accepted_as_its_own(own, tmp_path):
    snap = signed_by(own, tmp_path)

    auth = authenticate(snap, MANIFEST, own_key=own.public_key, trusted=[])

    assert (auth.signed, auth.key, auth.own) == (True, own.public_key, True)
    assert auth.describe() == f"signature ok (this host {own.public_key})"


def test_a_snapshot_signed_by_a_trusted_key_is_accepted_as_not_its_own(own, other, tmp_path):
    snap = signed_by(other, tmp_path)

    auth = authenticate(snap, MANIFEST, own_key=own.public_key, trusted=[other.public_key])

    assert auth.signed and not auth.own
    assert auth.describe(short=True) == f"signature ok (trusted key {other.public_key[:20]}…)"


def test_a_snapshot_signed_by_an_unknown_key_is_refused_with_what_to_do(own, other, tmp_path):
    snap = signed_by(other, tmp_path)

    text = refused(snap, MANIFEST, own_key=own.public_key, trusted=[])

    assert other.public_key in text and "add it to trusted_keys" in text


def test_a_manifest_changed_after_signing_is_refused(own, tmp_path):
    snap = signed_by(own, tmp_path)
    changed = MANIFEST.replace(b'"ok"', b'"OK"')

    assert "changed after it was signed" in refused(snap, changed, own_key=own.public_key, trusted=[])


def test_a_signature_made_without_the_fixed_prefix_is_refused(own, tmp_path):
    """A signature over the bare manifest bytes (some other protocol's message) never counts."""
    snap = signed_by(own, tmp_path)
    doc = json.loads((snap / SIGNATURE_FILE).read_text())
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key((tmp_path / "keys" / "own.key").read_bytes(), password=None)
    doc["signature"] = base64.b64encode(key.sign(MANIFEST)).decode()
    (snap / SIGNATURE_FILE).write_text(json.dumps(doc))

    assert "does not match" in refused(snap, MANIFEST, own_key=own.public_key, trusted=[])


def test_an_unsigned_snapshot_is_refused_unless_allowed_and_then_said_so(own, tmp_path):
    snap = signed_by(own, tmp_path)
    (snap / SIGNATURE_FILE).unlink()

    assert "--allow-unsigned" in refused(snap, MANIFEST, own_key=own.public_key, trusted=[])
    auth = authenticate(snap, MANIFEST, own_key=own.public_key, trusted=[], allow_unsigned=True)
    assert not auth.signed and auth.describe().startswith("UNSIGNED")


def test_a_missing_manifest_is_refused_even_when_unsigned_is_allowed(own, tmp_path):
    snap = signed_by(own, tmp_path)

    assert "missing or unreadable" in refused(snap, None, own_key=own.public_key, trusted=[], allow_unsigned=True)


def test_a_signature_file_that_is_a_link_is_refused_even_when_unsigned_is_allowed(own, tmp_path):
    snap = signed_by(own, tmp_path)
    real = tmp_path / "elsewhere.sig"
    os.rename(snap / SIGNATURE_FILE, real)
    os.symlink(real, snap / SIGNATURE_FILE)

    assert "cannot be read" in refused(snap, MANIFEST, own_key=own.public_key, trusted=[], allow_unsigned=True)


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda d: "not json", id="not-json"),
    pytest.param(lambda d: json.dumps({**d, "format": "gpg"}), id="unknown-format"),
    pytest.param(lambda d: json.dumps({**d, "algorithm": "rsa"}), id="unknown-algorithm"),
    pytest.param(lambda d: json.dumps({**d, "signature": "!!!"}), id="signature-not-base64"),
    pytest.param(lambda d: json.dumps({k: v for k, v in d.items() if k != "key"}), id="no-key"),
    pytest.param(lambda d: json.dumps({**d, "key": "ed25519:AAAA"}), id="key-too-short"),
    pytest.param(lambda d: json.dumps([d]), id="not-an-object"),
])
def test_a_damaged_signature_file_is_refused(own, tmp_path, mangle):
    snap = signed_by(own, tmp_path)
    doc = json.loads((snap / SIGNATURE_FILE).read_text())
    (snap / SIGNATURE_FILE).write_text(mangle(doc))

    assert "is not a valid signature" in refused(snap, MANIFEST, own_key=own.public_key, trusted=[])


@pytest.mark.parametrize("text, says", [
    ("ssh-ed25519 AAAAC3Nz", "is not a public key of the form ed25519:<base64>"),
    ("ed25519:!!!", "is not base64"),
    ("ed25519:" + base64.b64encode(b"x" * 31).decode(), "32 bytes, this one is 31"),
])
def test_a_malformed_public_key_says_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        parse_public_key(text)


def test_a_public_key_round_trips_through_its_text(own):
    from coderz_backup.signing import public_key_text

    assert public_key_text(parse_public_key(own.public_key)) == own.public_key
