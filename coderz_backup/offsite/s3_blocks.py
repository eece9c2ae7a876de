"""``credentials_block``: S3 credentials from a saved Prefect block instead of the config file.

The block is an ``aws-credentials`` (AwsCredentials) or ``minio-credentials`` (MinIOCredentials)
document, as prefect-aws defines them. The Prefect server knows both block types from its own
collection registry, so an operator creates one in the UI (Blocks → + → AWS Credentials) or with
prefect-aws in Python; coderz-backup reads the document's fields through the Prefect API and
needs no prefect-aws installed. ``name`` or ``<type-slug>/name`` picks the document.

What is taken: the key id and secret (``aws_access_key_id``/``aws_secret_access_key`` or
``minio_root_user``/``minio_root_password``), ``aws_session_token``, ``region_name`` and
``aws_client_parameters.endpoint_url``. A key id without a secret (or the reverse) is an error; a
block without keys means boto3's default chain (``profile_name`` is honoured).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SecretError
from ..runlog import redact

__all__ = ["BlockCredentials", "load_block"]

SLUGS = ("aws-credentials", "minio-credentials")


@dataclass(frozen=True)
class BlockCredentials:
    key_id: str | None
    secret: str | None
    token: str | None
    region: str | None
    endpoint_url: str | None
    profile: str | None

    def __repr__(self) -> str:   # never the secret, also not in a traceback's locals
        return f"BlockCredentials(key_id={'***' if self.key_id else None}, region={self.region!r})"


def load_block(ref: str, *, what: str) -> BlockCredentials:
    """Read the ``aws-credentials`` / ``minio-credentials`` block document ``ref`` (see the module)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug, _, name = ref.rpartition("/")
    slugs = (slug,) if slug else SLUGS
    if slug and slug not in SLUGS:
        raise SecretError(f"{what}: {slug!r} is not an S3 credentials block type (use {' or '.join(SLUGS)})")
    doc = None
    try:
        with get_client(sync_client=True) as client:
            for s in slugs:
                try:
                    doc = client.read_block_document_by_name(name=name, block_type_slug=s, include_secrets=True)
                    break
                except ObjectNotFound:
                    continue
    except SecretError:
        raise
    except Exception as exc:  # noqa: BLE001 - the API is down, unreachable, …: mapped into our tree
        raise SecretError(f"{what}: the Prefect block {ref!r} could not be read ({type(exc).__name__}); is the "
                          "Prefect API reachable?") from None
    if doc is None:
        raise SecretError(f"{what}: no {' or '.join(slugs)} block named {name!r} — create it in the Prefect UI "
                          "(Blocks → AWS Credentials / MinIO Credentials) or fix credentials_block")
    data = dict(doc.data or {})

    def text(key: str) -> str | None:
        v = data.get(key)
        if hasattr(v, "get_secret_value"):
            v = v.get_secret_value()
        return str(v) if v not in (None, "") else None

    key_id = text("aws_access_key_id") or text("minio_root_user")
    secret = text("aws_secret_access_key") or text("minio_root_password")
    if (key_id is None) != (secret is None):
        raise SecretError(f"{what}: block {name!r} has a key id without a secret (or a secret without a key id)")
    for s in (key_id, secret, text("aws_session_token")):
        redact(s)
    params = data.get("aws_client_parameters") or {}
    endpoint = params.get("endpoint_url") if isinstance(params, dict) else None
    return BlockCredentials(key_id, secret, text("aws_session_token"), text("region_name"),
                            str(endpoint).rstrip("/") if endpoint else None, text("profile_name"))
