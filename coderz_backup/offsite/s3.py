"""``kind = "s3"``: a bucket on AWS S3 or any S3-compatible store (MinIO, SeaweedFS, Ceph, …).

A snapshot lands under ``<prefix><snapshot>/`` with the local file names. A file below
``part_size_mb`` goes as one PUT (botocore computes its ``x-amz-checksum-sha256`` from the bytes
it sends); a larger one as a multipart upload of parts of that size, ``max_concurrency`` parts in
flight. The file is read once in order, hashing it whole and part by part; each part is uploaded
(streamed from the file, so memory stays flat whatever the size) as soon as its digest is known,
with that digest as its ``x-amz-checksum-sha256``. The store checks every request's checksum
against the bytes it receives before it accepts them; that signed header is what covers the
body, so the payload itself is not hashed a second time for SigV4 (``UNSIGNED-PAYLOAD``, as
botocore does over HTTPS anyway).

**How arrival is checked** (:meth:`S3Target.put`): after the upload a HEAD must report the
size that was sent, and the store's own SHA-256 of what it keeps must match what the
manifest says:

- one-part object: ``ChecksumSHA256`` is the base64 of the file's sha256 — compared with the
  manifest's sha256 directly;
- multipart object: ``ChecksumSHA256`` is the composite ``<sha256 of the parts' sha256s>-N``.
  The same composite is computed from the local file (same part boundaries) in the one pass
  that also checks the local file's sha256 against the manifest and feeds the uploads, so a
  match proves that the store holds exactly the manifest's bytes (a local file that does not
  match the manifest aborts the upload: nothing shows);
- a store that reports no checksum (or other part boundaries than expected): the object is
  read back and hashed.

The plaintext sha256 is also kept as object metadata ``x-amz-meta-sha256`` (for operators and
other tools; it must come back as sent, but it is not taken as proof of the content). A check
that fails deletes the object: ``OffsiteError … not kept``. PUT and CompleteMultipartUpload
are atomic, so no half-written object ever shows under its name (a multipart upload that
fails is aborted; one whose process is killed stays invisible until a lifecycle rule
``AbortIncompleteMultipartUpload`` cleans it up).

:meth:`S3Target.remove` deletes the *current* objects under a folder. On a versioned bucket
(and Object Lock needs one) that writes delete markers: the versions stay, a locked one until
its retention date — coderz-backup never deletes object versions, expiring them is the
bucket's lifecycle rules' job. Objects the store refuses to delete are logged one line each.

``object_lock_days > 0`` writes every object with Object Lock mode COMPLIANCE until now + that
many days (the bucket must have Object Lock enabled). :meth:`S3Target.lock_status` tells
retention a snapshot is still locked (its signature, the object written last, from a HEAD;
or object_lock_days after it was written when the store does not say), so retention leaves it
whole instead of hiding it behind delete markers.

Credentials are secret references (``env:NAME``, ``prefect-secret:NAME`` or the literal), or a
saved Prefect ``aws-credentials`` / ``minio-credentials`` block (``credentials_block``, see
:mod:`.s3_blocks`), resolved only when the first request is made; none given means boto3's default chain
(``AWS_*`` environment, ``~/.aws``, an instance role). They never show in a message or a log.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import logging
import threading
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Iterator, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from ..errors import OffsiteError
from ..reader import safe_relpath
from ..schema import resolve_secret
from .base import TargetBase, Throttle

__all__ = ["S3Target", "S3TargetConfig"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MiB = 1 << 20
#: codes that mean "these credentials may not do this" (wrong key, wrong secret, no permission)
AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
              "InvalidClientTokenId", "403", "Forbidden"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3TargetConfig(TargetBase):
    """A bucket on AWS S3 or an S3-compatible store that receives a copy of every snapshot."""

    kind: Literal["s3"] = Field(..., description="\"s3\": AWS S3 or an S3-compatible store")
    bucket: str = Field(..., min_length=3, max_length=63, description="the bucket (it must exist)")
    prefix: str = Field("coderz/", description="key prefix: a snapshot lands under <prefix><snapshot>/ "
                                               "(\"\" = the bucket's root)")
    endpoint_url: str | None = Field(None, description="the store's URL for an S3-compatible store, e.g. "
                                                       "https://minio.example:9000 (unset: AWS S3)")
    region: str = Field("us-east-1", description="the bucket's region (request signing)")
    access_key_id: SecretStr | None = Field(None, description="access key id reference (env:NAME recommended; "
                                                              "unset: boto3's default credential chain)")
    secret_access_key: SecretStr | None = Field(None, description="secret access key reference (env:NAME "
                                                                  "recommended)")
    credentials_block: str | None = Field(None, description="instead of the keys: a saved Prefect "
                                          "aws-credentials or minio-credentials block (its name, or slug/name); "
                                          "its region and endpoint_url apply unless set here")
    part_size_mb: int = Field(64, ge=5, le=5120, description="files above this size go as a multipart upload "
                                                            "with parts of this size (MiB; S3's minimum is 5)")
    max_concurrency: int = Field(4, ge=1, le=64, description="parts of one file uploaded in parallel "
                                                            "(each part is streamed from the file: memory stays flat)")
    object_lock_days: int = Field(0, ge=0, le=36500, description="> 0: every object is written with Object Lock "
                                  "(COMPLIANCE) until now + this many days; the bucket must have Object Lock "
                                  "enabled (0 = no lock)")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v.startswith("/") or "//" in v or ".." in v.split("/") or "\\" in v:
            raise ValueError("prefix is a key prefix like \"coderz/\" (no leading slash, no .. or //)")
        return v if not v or v.endswith("/") else v + "/"

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("endpoint_url starts with https:// (or http:// for a store on this host)")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _keys_together(self):
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither (boto3's default chain)")
        if self.credentials_block and self.access_key_id is not None:
            raise ValueError("set access_key_id/secret_access_key or credentials_block, not both")
        return self


class S3Target:
    kind: ClassVar[str] = "s3"
    config_model: ClassVar[type[S3TargetConfig]] = S3TargetConfig

    def __init__(self, name: str, config: S3TargetConfig):
        self.name = name
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self._cl = None
        self.endpoint_url, self.region = config.endpoint_url, config.region   # a credentials block may set them
        self.throttle = Throttle(config.bwlimit_kbps)
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self._where()}"

    # -- plumbing ------------------------------------------------------------------

    def _client(self):
        with self._lock:
            if self._cl is None:
                import boto3
                from botocore.config import Config

                cfg = self.config
                token, profile, region, endpoint = None, None, cfg.region, cfg.endpoint_url
                if cfg.credentials_block:
                    from .s3_blocks import load_block

                    block = load_block(cfg.credentials_block, what=f"offsite.{self.name}.credentials_block")
                    key_id, secret, token, profile = block.key_id, block.secret, block.token, block.profile
                    if "region" not in cfg.model_fields_set and block.region:
                        region = block.region
                    endpoint = endpoint or block.endpoint_url
                    self.endpoint_url, self.region = endpoint, region
                else:
                    key_id = resolve_secret(cfg.access_key_id, what=f"offsite.{self.name}.access_key_id")
                    secret = resolve_secret(cfg.secret_access_key, what=f"offsite.{self.name}.secret_access_key")
                self._secrets = tuple(s for s in (key_id, secret, token) if s)
                session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                                aws_session_token=token, region_name=region, profile_name=profile)
                self._cl = session.client("s3", endpoint_url=endpoint, config=Config(
                    s3={"addressing_style": "path" if endpoint else "auto",
                        # the body is covered by the signed x-amz-checksum-sha256 the store checks
                        "payload_signing_enabled": False},
                    connect_timeout=_timeouts(cfg)[0], read_timeout=_timeouts(cfg)[1],
                    retries={"mode": "standard", "max_attempts": 3},
                    max_pool_connections=max(10, cfg.max_concurrency * cfg.parallel_files + 2)))
            return self._cl

    def _key(self, rel: str) -> str:
        return self.prefix + safe_relpath(rel)

    def _where(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    def _clean(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _error(self, exc: BaseException, doing: str) -> OffsiteError:
        """A botocore/boto3 error as an operator message (never with a secret in it)."""
        from botocore import exceptions as bx

        inner = exc
        if type(exc).__name__ == "S3UploadFailedError" and isinstance(exc.__context__, Exception):
            inner = exc.__context__   # boto3 wraps the ClientError of an upload into its text
        head = f"off-site {self.name}: {doing} on {self.describe()} failed"
        if isinstance(inner, bx.ClientError):
            err = inner.response.get("Error", {}) or {}
            code = str(err.get("Code") or inner.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
            if code in AUTH_CODES:
                return OffsiteError(f"{head}: the store refused the credentials ({code}) — check "
                                    f"access_key_id/secret_access_key and that the key may read, write, list and "
                                    f"delete in bucket {self.bucket}")
            if code in MISSING_CODES:
                return OffsiteError(f"{head}: it is not there ({code})")
            if code == "NoSuchBucket":
                return OffsiteError(f"{head}: bucket {self.bucket} does not exist at {self._where()} — create it "
                                    "or fix bucket (and region/endpoint_url)")
            if code in ("PermanentRedirect", "301", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
                return OffsiteError(f"{head}: bucket {self.bucket} is in another region ({code}) — fix region")
            if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
                return OffsiteError(f"{head}: the bytes sent do not match the manifest's sha256 (the local file "
                                    f"changed or is damaged; `coderz-backup verify` it) ({code}); not kept")
            if code in ("SlowDown", "ServiceUnavailable", "InternalError", "500", "503"):
                return OffsiteError(f"{head}: the store is failing or throttling ({code}); the run retries, "
                                    "the next run catches up")
            msg = self._clean(str(err.get("Message") or ""))[:200]
            if self.config.object_lock_days and (code == "InvalidRequest" or "lock" in msg.lower()) \
                    and doing.startswith("uploading"):
                return OffsiteError(f"{head}: the store refused an Object Lock upload ({code}) — bucket "
                                    f"{self.bucket} must have Object Lock enabled (it can only be turned on when "
                                    "the bucket is created, or on AWS for a versioned one), or set "
                                    "object_lock_days = 0")
            return OffsiteError(f"{head}: {code}{': ' + msg if msg else ''}")
        if isinstance(inner, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
            connect, read = _timeouts(self.config)
            return OffsiteError(f"{head}: {self._where()} did not answer in time ({connect:g} s to connect, {read:g} s "
                                "per read, 3 tries) — is the store up and reachable, or overloaded?")
        if isinstance(inner, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ProxyConnectionError)):
            return OffsiteError(f"{head}: cannot reach {self._where()} — is the store up, is endpoint_url right, "
                                "does the network/firewall let this host through?")
        if isinstance(inner, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return OffsiteError(f"{head}: no credentials — set access_key_id and secret_access_key "
                                "(env:NAME references) or configure boto3's default chain")
        if isinstance(inner, bx.FlexibleChecksumError):
            return OffsiteError(f"{head}: the bytes read do not match the store's own checksum (damaged in the "
                                "store or on the way)")
        if isinstance(inner, (bx.BotoCoreError, OSError)):
            return OffsiteError(f"{head}: {type(inner).__name__}: {self._clean(str(inner))[:200]}")
        return OffsiteError(f"{head}: {type(inner).__name__}")

    @contextlib.contextmanager
    def _mapped(self, doing: str) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error(exc, doing) from None

    # -- the Target protocol ---------------------------------------------------------

    def put(self, rel: str, source: Path, *, size: int, sha256: str) -> None:
        key = self._key(rel)
        cl = self._client()
        part = self.config.part_size_mb * MiB
        try:
            if size < part:
                # one PUT
                expected = base64.b64encode(bytes.fromhex(sha256)).decode()
                with self._mapped(f"uploading {rel}"), open(source, "rb") as fh:
                    # the checksum is known (the manifest's sha256): botocore sends it as it is
                    # instead of reading the file for it; the store checks it against the body
                    cl.put_object(Bucket=self.bucket, Key=key, Body=self.throttle.wrap(fh), ContentLength=size,
                                  ChecksumSHA256=expected, Metadata={"sha256": sha256}, **self._lock_args())
            else:
                from s3transfer.utils import ChunksizeAdjuster

                part = ChunksizeAdjuster().adjust_chunksize(part, size)
                with self._mapped(f"uploading {rel}"):
                    expected = self._multipart(cl, key, rel, source, size, sha256, part)
        except OSError as exc:   # the local file (botocore's own socket errors arrive as BotoCoreError)
            raise OffsiteError(f"off-site {self.name}: reading {source} to upload it as {rel} failed: "
                               f"{exc.strerror or exc}") from None
        try:
            with self._mapped(f"checking {rel} after the upload"):
                head = cl.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
                problem = self._arrival_problem(head, key, size, sha256, expected)
        except BaseException:
            self._discard(key)
            raise
        if problem:
            self._discard(key)
            raise OffsiteError(f"off-site {self.name}: {rel} {problem}; not kept")

    def _multipart(self, cl, key: str, rel: str, source: Path, size: int, sha256: str, part: int) -> str:
        """Upload ``source`` in parts of ``part`` bytes; returns the composite ChecksumSHA256 the store
        must report. One sequential read hashes the file (its sha256, which must be the manifest's)
        and each part (the part's x-amz-checksum-sha256, which the store checks against the bytes it
        receives); a part is handed to the pool as soon as its digest is known, at most
        2 × ``max_concurrency`` parts ahead of the uploads (so the upload reads the part again from
        the page cache, and a failed part stops the reading). Any failure aborts the upload: no
        object ever shows."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        conc = self.config.max_concurrency
        upload_id = cl.create_multipart_upload(Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256",
                                               Metadata={"sha256": sha256}, **self._lock_args())["UploadId"]
        pool = ThreadPoolExecutor(conc, thread_name_prefix=f"s3-{self.name}")
        futures, pending = [], set()
        try:
            whole = hashlib.sha256()
            digests: list[bytes] = []
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            n = 0
            with open(source, "rb", buffering=0) as fh:
                while True:
                    h = hashlib.sha256()
                    got = 0
                    while got < part:
                        k = fh.readinto(view[:min(CHUNK, part - got)])
                        if not k:
                            break
                        h.update(view[:k])
                        whole.update(view[:k])
                        got += k
                    if not got:
                        break
                    digests.append(h.digest())
                    while len(pending) >= 2 * conc:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            f.result()   # a failed part: raise now, read no further
                    fut = pool.submit(self._part, cl, key, upload_id, len(digests), source, n, got, digests[-1])
                    futures.append(fut)
                    pending.add(fut)
                    n += got
                    if got < part:
                        break
            if (n, whole.hexdigest()) != (size, sha256):
                raise OffsiteError(f"off-site {self.name}: {rel} here is {n} bytes with another sha256 than the "
                                   f"manifest's {size} bytes (the local file changed); not kept")
            parts = [f.result() for f in futures]
            cl.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            try:
                cl.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception as exc:  # noqa: BLE001 - the caller's error is the one to report
                log.warning("off-site %s: could not abort the multipart upload of %s (%s)", self.name, key,
                            type(exc).__name__)
            raise
        pool.shutdown(wait=True)
        return base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode() + f"-{len(digests)}"

    def _part(self, cl, key: str, upload_id: str, number: int, source: Path, start: int, length: int,
              digest: bytes) -> dict:
        """Upload part ``number`` (``length`` bytes from ``start``), streamed from the file (memory stays
        flat) with its checksum given, which the store checks against the bytes it receives."""
        from s3transfer.utils import ReadFileChunk

        checksum = base64.b64encode(digest).decode()
        with ReadFileChunk.from_filename(str(source), start, length, enable_callbacks=False) as body:
            resp = cl.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                  Body=self.throttle.wrap(body),
                                  ContentLength=length, ChecksumSHA256=checksum)
        got = resp.get("ChecksumSHA256")
        if got is not None and got != checksum:
            raise OffsiteError(f"off-site {self.name}: part {number} of {key} arrived with another SHA-256 than "
                               "was sent; not kept")
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": checksum}

    def _lock_args(self) -> dict[str, Any]:
        """ExtraArgs of an upload under ``object_lock_days`` (none without)."""
        days = self.config.object_lock_days
        if not days:
            return {}
        until = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=days)
        return {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}

    def lock_status(self, rel: str) -> str | None:
        """``"under Object Lock until …"`` while file ``rel`` may not be deleted, else None: its retain-until
        date or legal hold from a HEAD, and with ``object_lock_days`` at least that long after it was
        written (a key without s3:GetObjectRetention gets no lock headers)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self._client().head_object(Bucket=self.bucket, Key=self._key(rel))
        except ClientError as exc:
            if str((exc.response.get("Error") or {}).get("Code", "")) in MISSING_CODES:
                return None
            raise self._error(exc, f"looking at the Object Lock of {rel}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"looking at the Object Lock of {rel}") from None
        now = dt.datetime.now(dt.timezone.utc)
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return "under an Object Lock legal hold"
        until = [t for t in (head.get("ObjectLockRetainUntilDate"),) if isinstance(t, dt.datetime)]
        written = head.get("LastModified")
        if self.config.object_lock_days and isinstance(written, dt.datetime):
            until.append(written + dt.timedelta(days=self.config.object_lock_days))
        latest = max(until, default=None)
        if latest is None or latest <= now:
            return None
        mode = head.get("ObjectLockMode") or "COMPLIANCE"
        return f"under Object Lock until {latest.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC ({mode})"

    def _arrival_problem(self, head: dict, key: str, size: int, sha256: str, expected: str) -> str | None:
        got_size = head.get("ContentLength")
        if got_size != size:
            return f"arrived as {got_size} bytes, not the {size} bytes sent"
        meta = (head.get("Metadata") or {}).get("sha256")
        if meta is not None and meta != sha256:
            return "came back with another x-amz-meta-sha256 than was sent"
        reported = head.get("ChecksumSHA256")
        # same shape (both whole-object, or both composite of the same number of parts): compare
        if reported is not None and reported.partition("-")[2] == expected.partition("-")[2]:
            if reported != expected:
                return "is kept by the store with another SHA-256 than the manifest's (the bytes changed)"
            return None
        # no checksum reported, or other part boundaries than this upload's: read it back
        h = hashlib.sha256()
        n = 0
        body = self._client().get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            reader = _Body(body, self, key)
            for chunk in iter(lambda: reader.read(CHUNK), b""):
                h.update(chunk)
                n += len(chunk)
        finally:
            body.close()
        if (n, h.hexdigest()) != (size, sha256):
            return f"read back as {n} bytes with another sha256 than the {size} bytes sent"
        return None

    def _discard(self, key: str) -> None:
        try:
            self._client().delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - the caller's error is the one to report
            log.warning("off-site %s: could not delete %s after a failed check (%s)", self.name, key,
                        type(exc).__name__)

    @contextlib.contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        key = self._key(rel)
        with self._mapped(f"reading {rel}"):
            resp = self._client().get_object(Bucket=self.bucket, Key=key)
        body = resp["Body"]
        try:
            yield io.BufferedReader(_Body(body, self, rel), CHUNK)
        finally:
            with contextlib.suppress(Exception):
                body.close()

    def names(self, rel: str = "") -> list[str]:
        base = (self._key(rel) + "/") if rel else self.prefix
        found: set[str] = set()
        with self._mapped(f"listing {base or '/'}"):
            pages = self._client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/")
            for page in pages:
                for cp in page.get("CommonPrefixes") or []:
                    name = cp["Prefix"][len(base):].rstrip("/")
                    if name:
                        found.add(name)
                for obj in page.get("Contents") or []:
                    name = obj["Key"][len(base):]
                    if name:
                        found.add(name)
        return sorted(found)

    def exists(self, rel: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(rel)
        try:
            self._client().head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            code = str((exc.response.get("Error") or {}).get("Code", ""))
            if code in MISSING_CODES:
                return False
            raise self._error(exc, f"looking for {rel}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"looking for {rel}") from None

    def remove(self, rel: str) -> None:
        base = self._key(rel) + "/"
        with self._mapped(f"listing {base} to delete it"):
            pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            keys = [{"Key": obj["Key"]} for page in pages for obj in page.get("Contents") or []]
        self._delete(keys, f"{rel}/")
        # a store with real folders (SeaweedFS) keeps the emptied folders listed; AWS has none
        with self._mapped(f"listing {base} after deleting it"):
            left = self._client().list_objects_v2(Bucket=self.bucket, Prefix=base, Delimiter="/", MaxKeys=2)
        if [o for o in left.get("Contents") or [] if o["Key"] == base] or left.get("CommonPrefixes"):
            folders = {base} | {k["Key"][:i + 1] for k in keys for i in range(len(base), len(k["Key"]))
                                if k["Key"][i] == "/"}
            self._delete([{"Key": f} for f in sorted(folders, key=len, reverse=True)], f"{rel}/", quiet=True)

    def _delete(self, objects: list[dict[str, Any]], what: str, *, quiet: bool = False) -> int:
        """Delete ``objects`` ({"Key", optional "VersionId"}) in batches of 1000; one log line for each
        object the store refuses (Object Lock, a bucket policy), OffsiteError only when there was
        something and none of it could be deleted (``quiet``: neither). Returns how many were deleted."""
        if not objects:
            return 0
        deleted, refused = 0, 0
        for i in range(0, len(objects), 1000):
            batch = objects[i:i + 1000]
            with self._mapped(f"deleting {what}"):
                resp = self._client().delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = resp.get("Errors") or []
            for err in errors if not quiet else ():
                version = f" (version {err['VersionId']})" if err.get("VersionId") else ""
                log.warning("off-site %s: the store keeps %s%s: %s — left as it is", self.name, err.get("Key"),
                            version, err.get("Code") or "refused")
            refused += len(errors)
            deleted += len(batch) - len(errors)
        if deleted == 0 and not quiet:
            raise OffsiteError(f"off-site {self.name}: none of the {refused} object(s) under {what} on "
                               f"{self.describe()} could be deleted (Object Lock or a bucket policy keeps them); "
                               "the key needs s3:DeleteObject, or wait for the retention to end")
        return deleted


def _timeouts(cfg: S3TargetConfig) -> tuple[float, float]:
    """(connect, read) timeouts of one request: 10 s and 60 s, never more than ``timeout_s``."""
    return min(cfg.timeout_s, 10.0), min(cfg.timeout_s, 60.0)


class _Body(io.RawIOBase):
    """A get_object body as a raw binary stream whose read errors are OffsiteErrors."""

    def __init__(self, body, target: S3Target, rel: str):
        self._body, self._target, self._rel = body, target, rel

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        from botocore.exceptions import BotoCoreError

        try:
            data = self._body.read(len(buf))
        except (BotoCoreError, OSError) as exc:
            raise self._target._error(exc, f"reading {self._rel}") from None
        except Exception as exc:   # urllib3's ProtocolError / IncompleteRead: the connection broke
            if type(exc).__module__.startswith(("urllib3", "http")):
                raise OffsiteError(f"off-site {self._target.name}: reading {self._rel} from "
                                   f"{self._target.describe()} broke off ({type(exc).__name__}); try again") from None
            raise
        n = len(data)
        buf[:n] = data
        return n

