"""Which Prefect API a CLI run uses (coderz_backup.orchestrator.choose_api) and which commands
start the embedded server early (coderz_backup.__main__): read from files and the environment,
Prefect never imported."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from coderz_backup import orchestrator
from coderz_backup.__main__ import _runs_a_flow


@pytest.fixture
def bare(monkeypatch, tmp_path):
    for k in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("CODERZ_BACKUP_LOCAL_API", "off")
    return tmp_path


def test_nothing_configured_means_the_embedded_api(bare):
    assert orchestrator.choose_api() == (None, "embedded")


def test_the_environment_wins_over_the_profile(bare, monkeypatch):
    (bare / "profiles.toml").write_text('active = "p"\n[profiles.p]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n')
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:8/api")
    assert orchestrator.choose_api() == ("http://127.0.0.1:8/api", "PREFECT_API_URL")


def test_the_active_profile_and_prefect_profile_override(bare, monkeypatch):
    (bare / "profiles.toml").write_text('active = "a"\n[profiles.a]\nPREFECT_API_URL = "http://127.0.0.1:1/api"\n'
                                        '[profiles.b]\nPREFECT_API_URL = "http://127.0.0.1:2/api"\n[profiles.c]\n')
    assert orchestrator.choose_api() == ("http://127.0.0.1:1/api", "Prefect profile a")
    monkeypatch.setenv("PREFECT_PROFILE", "b")
    assert orchestrator.choose_api() == ("http://127.0.0.1:2/api", "Prefect profile b")
    monkeypatch.setenv("PREFECT_PROFILE", "c")      # a profile without an API URL
    assert orchestrator.choose_api() == (None, "embedded")


@pytest.mark.parametrize("text", ["not = [toml", "", "active = 3\nprofiles = 4\n"])
def test_a_broken_or_odd_profiles_file_is_no_api(bare, text):
    (bare / "profiles.toml").write_text(text)
    assert orchestrator.choose_api() == (None, "embedded")


class _Api(http.server.BaseHTTPRequestHandler):
    version = "3.9.1"

    def do_GET(self):  # noqa: N802
        body = {"/api/health": True, "/api/admin/version": self.version}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *a):
        pass


@pytest.mark.parametrize("version, used", [("3.9.1", True), ("2.20.0", False)])
def test_a_local_prefect_3_server_is_used_and_another_version_is_not(bare, monkeypatch, version, used):
    handler = type("H", (_Api,), {"version": version})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/api"
        monkeypatch.setenv("CODERZ_BACKUP_LOCAL_API", url + "/")
        expected = (url, "the Prefect server on this host") if used else (None, "embedded")
        assert orchestrator.choose_api() == expected
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("argv, early", [
    (["backup"], True), (["backup", "--only", "redis"], True), (["--version"], False),
    (["restore", "--yes"], True), (["restore", "--list"], False), (["drill", "-h"], False),
    (["list"], False), (["verify"], False), (["config", "check"], False), ([], False),
])
def test_only_the_commands_that_run_a_flow_start_the_embedded_server_early(argv, early):
    assert _runs_a_flow(argv) is early
