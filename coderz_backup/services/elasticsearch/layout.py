"""The Elasticsearch export's layout: its index file, format tag, the settings it leaves out, index names."""

from __future__ import annotations

from typing import Any

from ...errors import VerifyError


INDEX_FILE = "index.json"


FORMAT = "coderz-es-export/1"


#: settings ES sets itself and refuses on create (NEST's list + other private ones)
_PRIVATE_EXACT = {"index.uuid", "index.creation_date", "index.provided_name", "index.history.uuid",
                  "index.verified_before_close", "index.creation_date_string"}


_PRIVATE_PREFIX = ("index.version.", "index.routing.allocation.initial_recovery.", "index.resize.")


_BAD_NAME_CHARS = set('\\/*?"<>| ,#:')


def strip_private_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat index settings without the keys ES refuses on ``PUT /<idx>``."""
    out = {}
    for key, value in flat.items():
        k = key if key.startswith("index.") else f"index.{key}"
        if k in _PRIVATE_EXACT or k.startswith(_PRIVATE_PREFIX):
            continue
        out[k] = value
    return out


def flatten_settings(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(flatten_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_index_name(name: str) -> None:
    """Refuse names that are not a single concrete index (``_all``, ``*``, paths)."""
    if (not name or name in (".", "..") or name.startswith(("-", "_", "+")) or name != name.lower()
            or any(ch in _BAD_NAME_CHARS for ch in name) or len(name.encode()) > 255):
        raise VerifyError(f"{name!r} is not a valid index name")
