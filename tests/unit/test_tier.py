"""The unit tier itself: the package's plain-Python modules load without Prefect.

Service modules, the writer, config, report and the CLI's argument handling must stay usable
(and testable) without Prefect; only the flows and the orchestrator layer import it.
"""

from __future__ import annotations

import subprocess
import sys

PLAIN = ["coderz_backup.cli", "coderz_backup.config", "coderz_backup.notify", "coderz_backup.report",
         "coderz_backup.rotation", "coderz_backup.runlog", "coderz_backup.signing", "coderz_backup.sizecheck",
         "coderz_backup.snapshot", "coderz_backup.writer", "coderz_backup.services"]


def test_the_plain_modules_import_no_prefect():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in PLAIN)
            + "print(' '.join(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))))")

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)

    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == ""
