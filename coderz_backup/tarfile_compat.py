"""The ``tarfile`` module every part of coderz-backup uses: one with extraction filters (PEP 706:
``data_filter``, ``FilterError``, ``extractall(filter=…)``, ``TarInfo.replace``), which the
restore's confinement of every write is built on.

Python has them since 3.11.4 (and 3.12). Debian 12's own Python is 3.11.2, which does not: there
the backport of the 3.12 module (``backports.tarfile``, a dependency only for such a Python) is
used. Import ``tarfile`` from here, never from the standard library directly: a ``TarError`` of
one module is not caught as the other's.
"""

from __future__ import annotations

import tarfile as _stdlib

if hasattr(_stdlib, "data_filter") and hasattr(_stdlib, "FilterError"):
    tarfile = _stdlib
else:  # pragma: no cover - only on a Python without PEP 706 (Debian 12's 3.11.2)
    try:
        from backports import tarfile  # type: ignore[no-redef]
    except ImportError:
        raise ImportError("this Python's tarfile has no extraction filters (Python < 3.11.4) and the "
                          "backports.tarfile package is missing: run scripts/setup.sh again") from None

__all__ = ["tarfile"]
