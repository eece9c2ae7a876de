"""Helpers shared by the tests."""

from __future__ import annotations

import subprocess
import sys


def run_cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coderz_backup", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
