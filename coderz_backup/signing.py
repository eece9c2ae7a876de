"""Authenticity of snapshots: every finished manifest is signed with this host's Ed25519 key.

``manifest.json`` holds the size and sha256 of every file of a snapshot, so a valid signature
over its exact bytes vouches for the whole snapshot. The signature lives beside it in
``manifest.json.sig`` (written before the snapshot gets its final name)::

    {"format": "coderz-backup-signature/1", "algorithm": "ed25519",
     "key": "ed25519:<base64 public key>", "signature": "<base64>"}

What is signed is ``SIGNED_PREFIX + <manifest bytes>`` (a fixed prefix, so a signature made
here can never be passed off as one over some other kind of message).

Readers (``verify``, ``restore``, and later drills and off-site copies) call
:func:`authenticate` before they look at anything else: a snapshot is accepted when it is
signed by this host's key or one of ``trusted_keys``; an unsigned one only with
``allow_unsigned`` (snapshots older than this feature), and then the caller says so loudly.

The private key is a PEM (PKCS#8) file, created on first use with mode 0600 in a 0700 folder,
or the text of a Prefect Secret block (``signing_key = "prefect-secret:NAME"``). It never
belongs on the backup medium: whoever can read it can sign.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, SignatureError

__all__ = ["SIGNATURE_FILE", "Signer", "Authenticity", "load_signer", "parse_public_key", "authenticate",
           "public_key_text"]

SIGNATURE_FILE = "manifest.json.sig"
SIGNATURE_FORMAT = "coderz-backup-signature/1"
SIGNED_PREFIX = b"coderz-backup manifest signature v1\n"
KEY_PREFIX = "ed25519:"


def public_key_text(public_key) -> str:
    """``ed25519:<base64 of the 32 raw bytes>`` — how keys are shown, configured and recorded."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str):
    """The Ed25519 public key in ``ed25519:<base64>``; ValueError saying what is wrong."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(text, str) or not text.startswith(KEY_PREFIX):
        raise ValueError(f"{str(text)[:60]!r} is not a public key of the form ed25519:<base64> "
                         "(print one with `coderz-backup key show`)")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text[:60]!r}: the part after 'ed25519:' is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{text[:60]!r}: an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


class Signer:
    """This host's signing key."""

    def __init__(self, private_key, where: str):
        self._key = private_key
        self.where = where            # the path or the Prefect Secret block (for messages)
        self.public_key = public_key_text(private_key.public_key())

    def signature_document(self, manifest_bytes: bytes) -> bytes:
        """The content of ``manifest.json.sig`` for these manifest bytes."""
        sig = self._key.sign(SIGNED_PREFIX + manifest_bytes)
        doc = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "key": self.public_key,
               "signature": base64.b64encode(sig).decode()}
        return (json.dumps(doc, indent=2) + "\n").encode()


def load_signer(ref: str, *, create: bool = True) -> Signer:
    """The signing key at path ``ref`` (created when missing and ``create``), or the PEM text of
    Prefect Secret block ``prefect-secret:NAME``. ConfigError when it cannot be used."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if ref.startswith("prefect-secret:"):
        from .config import resolve_secret
        from pydantic import SecretStr

        pem = resolve_secret(SecretStr(ref), what="signing_key")
        return Signer(_parse_private(pem.encode(), ref), ref)
    path = Path(ref)
    try:
        data = _read_private_file(path)
    except FileNotFoundError:
        if not create:
            raise ConfigError("signing_key", [f"{path}: no signing key there yet (a backup creates it)"]) from None
        return Signer(_create_key_file(path, Ed25519PrivateKey.generate()), str(path))
    return Signer(_parse_private(data, str(path)), str(path))


def _read_private_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError("signing_key", [f"{path}: cannot be read ({exc.strerror}); it must be a regular file "
                                          "readable by this user, not a link"]) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("signing_key", [f"{path}: not a regular file"])
        if st.st_mode & 0o077:
            raise ConfigError("signing_key", [f"{path}: readable or writable by others (mode "
                                              f"{stat.S_IMODE(st.st_mode):04o}); `chmod 600 {path}` — whoever "
                                              "can read it can sign snapshots"])
        return fh.read()


def _parse_private(data: bytes, where: str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("signing_key", [f"{where}: not an unencrypted PEM private key ({exc})"]) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("signing_key", [f"{where}: not an Ed25519 key"])
    return key


def _create_key_file(path: Path, key):
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)        # never replaces a key another process created meanwhile
        except FileExistsError:
            os.unlink(tmp)
            return _parse_private(_read_private_file(path), str(path))
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError("signing_key", [f"{path}: cannot create the signing key ({exc.strerror})"]) from None
    return key


@dataclass(frozen=True)
class Authenticity:
    """The outcome of :func:`authenticate` for an accepted snapshot."""

    signed: bool
    key: str | None = None     # the public key that signed it
    own: bool = False          # signed by this host's key

    def describe(self, short: bool = False) -> str:
        """One line for verify, the plan and the report (``short``: the key abbreviated, so the
        line wraps in the UI's narrow approval dialog)."""
        if not self.signed:
            return ("UNSIGNED — accepted only because of --allow-unsigned; nothing vouches that this host "
                    "wrote it")
        key = f"{self.key[:20]}…" if short and self.key else self.key
        return f"signature ok ({'this host' if self.own else 'trusted key'} {key})"


def authenticate(folder: Path, manifest_bytes: bytes | None, *, own_key: str | None, trusted: list[str],
                 allow_unsigned: bool = False) -> Authenticity:
    """Check the signature of the manifest ``manifest_bytes`` of the snapshot in ``folder``.

    Raises SignatureError (nothing has been looked at or changed yet) unless it is signed by
    ``own_key`` or a key in ``trusted``, or unsigned and ``allow_unsigned``.
    """
    from cryptography.exceptions import InvalidSignature

    name = folder.name
    if manifest_bytes is None:
        raise SignatureError(f"snapshot {name}: manifest.json is missing or unreadable; it cannot be trusted")
    sig_path = folder / SIGNATURE_FILE
    try:
        fd = os.open(sig_path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if allow_unsigned:
            return Authenticity(signed=False)
        raise SignatureError(f"snapshot {name} is not signed ({SIGNATURE_FILE} missing): refused. A snapshot "
                             "from before signed manifests can be used with --allow-unsigned") from None
    except OSError as exc:
        raise SignatureError(f"snapshot {name}: {SIGNATURE_FILE} cannot be read ({exc.strerror}): refused") from None
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(64 * 1024)
    try:
        doc = json.loads(raw)
        key_text, sig = doc["key"], base64.b64decode(doc["signature"], validate=True)
        if doc.get("format") != SIGNATURE_FORMAT or doc.get("algorithm") != "ed25519":
            raise ValueError("unknown signature format")
        public_key = parse_public_key(key_text)
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
        raise SignatureError(f"snapshot {name}: {SIGNATURE_FILE} is not a valid signature ({exc}): refused") from None
    accepted = {k for k in (own_key, *trusted) if k}
    if key_text not in accepted:
        raise SignatureError(f"snapshot {name} is signed by {key_text}, which is neither this host's key nor in "
                             "trusted_keys: refused. If that is your old host's key, add it to trusted_keys")
    try:
        public_key.verify(sig, SIGNED_PREFIX + manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"snapshot {name}: the signature does not match manifest.json — the manifest was "
                             "changed after it was signed: refused") from None
    return Authenticity(signed=True, key=key_text, own=key_text == own_key)
