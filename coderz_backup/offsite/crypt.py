"""Encryption of off-site copies with age (https://age-encryption.org, through pyrage).

With ``encrypt_to = ["age1…"]`` on a target, every file of a snapshot is encrypted to those
recipients before it leaves the host, except ``manifest.json.sig`` (the Ed25519 signature of the
plaintext manifest: it reveals nothing of the data and lets a push see that a copy is already
there without the identity). Remote names stay the local names; an encrypted file starts with
``age-encryption.org/v1``. The backup host needs only the recipients (public keys): it can
write copies it cannot read back.

Reading back (``fetch``, ``verify --from``, ``restore --from``) needs an identity: ``--identity``
or the target's ``identity`` key — a file holding ``AGE-SECRET-KEY-1…`` lines (``age-keygen``'s
output), ``env:NAME`` or ``prefect-secret:NAME`` holding that text. age authenticates every
64 KiB chunk, and on top of it the plaintext is compared with the signed manifest's size and
sha256 as it is decrypted, so a changed byte, a swapped file or a copy made with another key
is refused.

Streaming both ways (pyrage ``encrypt_io`` / ``decrypt_io``): memory stays flat whatever the
file's size. Encrypting writes one file at a time into a private folder beside the snapshots
(``.offsite-<target>-<pid>-…``, removed after each file; a leftover of a killed run is removed
by the next push), so a push needs free space for its largest file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import ConfigError, OffsiteError, SecretError, VerifyError
from ..schema import _resolve
from ..runlog import redact

__all__ = ["AGE_MAGIC", "Staging", "decrypt_into", "is_encrypted", "load_identities", "parse_recipient"]

AGE_MAGIC = b"age-encryption.org/v1\n"
CHUNK = 1 << 20


def parse_recipient(text: str):
    """An age recipient (``age1…`` X25519, or an ``ssh-ed25519 …`` / ``ssh-rsa …`` public key)."""
    from pyrage import ssh, x25519

    text = text.strip()
    try:
        if text.startswith("age1"):
            return x25519.Recipient.from_str(text)
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return ssh.Recipient.from_str(text)
    except Exception:  # noqa: BLE001 - pyrage raises its own RecipientError / ValueError
        pass
    raise ValueError(f"{text[:24]!r}… is not an age recipient (age1… from `age-keygen -y`, or an ssh-ed25519 "
                     "public key)")


def load_identities(ref: str, *, what: str) -> list:
    """The age identities a reference names: a file of ``AGE-SECRET-KEY-1…`` lines, ``env:NAME``
    or ``prefect-secret:NAME`` holding that text, or the key itself. Never echoes a key."""
    from pyrage import x25519

    if ref.startswith(("env:", "prefect-secret:")) or ref.startswith("AGE-SECRET-KEY-"):
        text = _resolve(ref, what)
    else:
        path = Path(ref).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(what, [f"the age identity file {path} cannot be read: {exc.strerror}"]) from None
        except UnicodeDecodeError:
            raise ConfigError(what, [f"{path} is not an age identity file (AGE-SECRET-KEY-1… lines)"]) from None
    redact(text)
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(x25519.Identity.from_str(line))
        except Exception:  # noqa: BLE001
            raise SecretError(f"{what}: a line is not an age identity (AGE-SECRET-KEY-1…)") from None
        redact(line)
    if not keys:
        raise SecretError(f"{what}: holds no age identity (AGE-SECRET-KEY-1… lines, as `age-keygen` writes)")
    return keys


def is_encrypted(head: bytes) -> bool:
    return head.startswith(AGE_MAGIC)


class _Sink(io.RawIOBase):
    """Writes through to ``out`` while counting and hashing; refuses more than ``limit`` bytes."""

    def __init__(self, out: BinaryIO, limit: int | None = None):
        self.out, self.limit = out, limit
        self.sha = hashlib.sha256()
        self.size = 0
        #: what went wrong on our side (too long, the local disk): pyrage turns an exception raised
        #: in write() into its own error, so the cause is kept here to be raised as itself
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = len(b)
        self.size += n
        try:
            if self.limit is not None and self.size > self.limit:
                raise _TooLong()
            self.sha.update(b)
            self.out.write(b)
        except (_TooLong, OSError) as exc:
            self.error = self.error or exc
            raise
        return n


class _TooLong(Exception):
    pass


def copy_limited(src: BinaryIO, out: BinaryIO, limit: int | None) -> tuple[int, str]:
    """Copy ``src`` into ``out``; (size, sha256); VerifyError past ``limit`` bytes."""
    sink = _Sink(out, limit)
    try:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            sink.write(chunk)
    except _TooLong:
        raise VerifyError(f"longer than the {limit} bytes the manifest says") from None
    return sink.size, sink.sha.hexdigest()


def decrypt_into(src: BinaryIO, out: BinaryIO, identities: list | None, *, limit: int | None,
                 where: str) -> tuple[int, str]:
    """Copy ``src`` into ``out``, decrypting it when it is an age file; returns the plaintext's
    (size, sha256). Past ``limit`` bytes (the signed size) it stops: VerifyError."""
    buffered = src if hasattr(src, "peek") else io.BufferedReader(src, CHUNK)   # type: ignore[arg-type]
    head = buffered.peek(len(AGE_MAGIC))[:len(AGE_MAGIC)]
    if not is_encrypted(head):
        return copy_limited(buffered, out, limit)
    if not identities:
        raise OffsiteError(f"{where} is encrypted (age): give the identity with --identity FILE (or env:NAME, "
                           "prefect-secret:NAME), or set identity in the target's table")
    from pyrage import decrypt_io

    sink = _Sink(out, limit)
    try:
        decrypt_io(buffered, sink, identities)
    except Exception as exc:  # noqa: BLE001 - pyrage: DecryptError / OSError("decryption error")
        if isinstance(sink.error, _TooLong) or isinstance(exc, _TooLong):
            raise VerifyError(f"longer than the {limit} bytes the manifest says") from None
        if sink.error is not None:   # writing here failed (disk full, …): not the copy's fault
            raise sink.error from None
        msg = str(exc).lower()
        if "no matching keys" in msg or "no identity" in msg:
            raise OffsiteError(f"{where} is encrypted to other recipients than the identity given "
                               "(wrong --identity?)") from None
        raise VerifyError("does not decrypt — the encrypted copy was changed or damaged") from None
    return sink.size, sink.sha.hexdigest()


def decrypt_bytes(data: bytes, identities: list | None, *, where: str, limit: int) -> bytes:
    """A small file (the manifest) decrypted in memory when it is an age file."""
    out = io.BytesIO()
    try:
        decrypt_into(io.BufferedReader(io.BytesIO(data)), out, identities, limit=limit, where=where)
    except VerifyError as exc:
        raise VerifyError(f"{where}: {exc}") from None
    return out.getvalue()


class Staging:
    """A private folder beside the snapshots for one push's encrypted files (see the module
    docstring): :meth:`encrypt` writes one file's ciphertext there and yields it with its size
    and sha256; it is deleted when the caller is done with it."""

    PREFIX = ".offsite-"

    def __init__(self, base: Path, target: str, recipients: list):
        self.base, self.target, self.recipients = base, target, recipients
        self.dir: Path | None = None

    def __enter__(self) -> "Staging":
        self._clean_stale()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{self.target}-{os.getpid()}-", dir=self.base))
        return self

    def __exit__(self, *exc) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _clean_stale(self) -> None:
        """Folders of pushes whose process is gone (killed mid-copy)."""
        with contextlib.suppress(OSError):
            for p in self.base.iterdir():
                if not p.name.startswith(f"{self.PREFIX}{self.target}-") or not p.is_dir() or p.is_symlink():
                    continue
                pid = p.name[len(self.PREFIX) + len(self.target) + 1:].split("-", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(p, ignore_errors=True)

    @contextlib.contextmanager
    def encrypt(self, source: Path) -> Iterator[tuple[Path, int, str]]:
        from pyrage import encrypt_io

        assert self.dir is not None
        fd, name = tempfile.mkstemp(dir=self.dir, suffix=".age")
        staged = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                sink = _Sink(out)
                try:
                    encrypt_io(src, sink, self.recipients)
                except OSError as exc:
                    raise OffsiteError(f"encrypting {source.name} for off-site {self.target} failed: "
                                       f"{exc.strerror or exc}") from None
                out.flush()
            yield staged, sink.size, sink.sha.hexdigest()
        finally:
            with contextlib.suppress(OSError):
                staged.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
