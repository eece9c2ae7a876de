"""Unit tier fixtures: plain Python on tmp_path, no servers, no Docker, no Prefect API, no network.

Every test runs with the settings that would otherwise come from the host cleared, so the
host's own config file, destination or keep days never leak into a result.
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """No config file, destination, keep days or signing key of the host."""
    from coderz_backup import config

    for name in ("CODERZ_BACKUP_CONFIG", "CODERZ_BACKUP_DEST", "KEEP_DAYS", "KEEP_DAILY", "KEEP_WEEKLY", "KEEP_MONTHLY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "coderz-backup.toml")
    monkeypatch.setenv("CODERZ_BACKUP_SIGNING_KEY", str(tmp_path / "keys" / "signing.key"))


def pytest_sessionfinish(session, exitstatus):
    """A unit-tier run that loaded Prefect's server code was not a unit run: fail it."""
    if not getattr(session.config, "coderz_unit_tier_only", False):
        return   # unit and integration tests in one run: the integration tests use the server
    loaded = sorted(m for m in sys.modules if m == "prefect.server" or m.startswith("prefect.server."))
    if loaded:
        writer = session.config.get_terminal_writer()
        writer.line()
        writer.line(
            f"✗ unit tier: the Prefect server was imported ({', '.join(loaded[:3])}, …); "
            "unit tests must not need it", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
