"""[monitor] end to end: heartbeat pings to a local HTTP server, the node_exporter textfile read by
Debian's prometheus-node-exporter and scraped by a real Prometheus, and the shipped alert rules
checked with promtool."""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from helpers import run_cli

from coderz_backup.monitor import read_textfile
from coderz_backup.sandbox import PrometheusServer, free_port
from coderz_backup.snapshot import SnapshotStore
from coderz_backup.waiting import wait_until

RULES = Path(__file__).resolve().parents[1] / "deployments" / "prometheus"


# -- a healthchecks-like ping endpoint ------------------------------------------------------------
class PingServer:
    """Records every request (method, path, query, body); answers ``status``."""

    def __init__(self, status: int = 200):
        self.status = status
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode("utf-8") if n else ""
                parts = urlsplit(self.path)
                with outer.lock:
                    outer.requests.append({"method": self.command, "path": parts.path,
                                           "query": parse_qs(parts.query), "body": body})
                self.send_response(outer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_POST = do_GET = _record

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _with_monitor(stack, body: str) -> None:
    stack.config.write_text(stack.config.read_text() + f"\n[monitor]\n{body}")


def _no_secret(stack, res, secret: str) -> None:
    assert secret not in res.stdout + res.stderr
    for snap in stack.snapshots():
        for f in ("backup.log", "manifest.json"):
            if (snap / f).exists():
                assert secret not in (snap / f).read_text(), f"{secret} in {snap / f}"


def test_an_ok_run_pings_start_then_success_with_the_flow_run_id_and_the_report(stack):
    check = str(uuid.uuid4())
    with PingServer() as hc:
        _with_monitor(stack, f'ping_url = "http://127.0.0.1:{hc.port}/ping/{check}"\n')
        res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    m = stack.manifest()
    assert [(r["method"], r["path"]) for r in hc.requests] == [("POST", f"/ping/{check}/start"),
                                                                 ("POST", f"/ping/{check}")]
    assert [r["query"] for r in hc.requests] == [{"rid": [m["flow_run_id"]]}] * 2
    done = hc.requests[1]["body"]
    assert "Backup Complete" in done and m["snapshot"] in done and "postgres-prefect.sql.gz" in done
    assert "Monitor: ⚠" not in res.stdout
    _no_secret(stack, res, check)


def test_a_partial_run_pings_fail(stack):
    check = str(uuid.uuid4())
    stack.config.write_text(stack.config.read_text().replace('password = "env:T_REDIS"', 'password = "wrong"'))
    with PingServer() as hc:
        _with_monitor(stack, f'ping_url = "http://127.0.0.1:{hc.port}/{check}"\n')
        res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert [r["path"] for r in hc.requests] == [f"/{check}/start", f"/{check}/fail"]
    assert "✗ redis.rdb" in hc.requests[1]["body"]


def test_a_run_that_cannot_start_pings_fail_and_writes_status_2_keeping_the_last_success(stack, tmp_path):
    check = str(uuid.uuid4())
    prom = tmp_path / "textfile" / "coderz_backup.prom"
    prom.parent.mkdir()
    with PingServer() as hc:
        _with_monitor(stack, f'ping_url = "http://127.0.0.1:{hc.port}/{check}"\ntextfile = "{prom}"\n')
        ok = run_cli(["backup", "--config", str(stack.config)], stack.env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        first = read_textfile(prom)
        store = SnapshotStore(stack.dest)
        with store.lock():
            res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert [r["path"].removeprefix(f"/{check}") for r in hc.requests] == ["/start", "", "/start", "/fail"]
    assert "another backup run" in hc.requests[3]["body"]
    now = read_textfile(prom)
    assert now[("coderz_backup_last_status", ())] == 2
    assert now[("coderz_backup_last_success_timestamp_seconds", ())] == \
        first[("coderz_backup_last_success_timestamp_seconds", ())]
    assert now[("coderz_backup_last_run_timestamp_seconds", ())] > first[("coderz_backup_last_run_timestamp_seconds", ())]
    _no_secret(stack, res, check)


def test_a_backup_whose_prefect_api_is_down_still_pings_fail_and_writes_status_2(stack, tmp_path):
    check = str(uuid.uuid4())
    prom = tmp_path / "textfile" / "coderz_backup.prom"
    prom.parent.mkdir()
    env = dict(stack.env, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api", CODERZ_BACKUP_API_TIMEOUT_S="2")
    with PingServer() as hc:
        _with_monitor(stack, f'ping_url = "http://127.0.0.1:{hc.port}/{check}"\ntextfile = "{prom}"\n')
        res = run_cli(["backup", "--config", str(stack.config)], env, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert [r["path"] for r in hc.requests] == [f"/{check}/fail"]
    assert "the backup flow could not start: the Prefect API at PREFECT_API_URL=" in hc.requests[0]["body"]
    assert read_textfile(prom)[("coderz_backup_last_status", ())] == 2
    assert f"Monitor: metrics written to {prom}" in res.stderr
    _no_secret(stack, res, check)


@pytest.mark.parametrize("answer", ["500", "nothing listens", "never answers"])
def test_a_ping_that_fails_never_fails_the_backup_and_the_report_says_so(stack, answer):
    check = str(uuid.uuid4())
    with PingServer(status=500) as hc, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)   # connections complete in the kernel's backlog; nothing ever reads them
        port = {"500": hc.port, "nothing listens": free_port(), "never answers": silent.getsockname()[1]}[answer]
        timeout = 1 if answer == "never answers" else 10
        _with_monitor(stack, f'ping_url = "http://127.0.0.1:{port}/{check}"\nping_timeout_s = {timeout}\n')
        res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert stack.manifest()["status"] == "ok"
    why = {"500": "HTTP 500", "nothing listens": "ConnectError", "never answers": "ReadTimeout"}[answer]
    for kind in ("start", "success"):
        line = f"Monitor: ⚠ heartbeat ping {kind} to http://127.0.0.1:{port}/… failed ({why}"
        assert line in res.stdout, res.stdout
    log = (stack.dest / "latest" / "backup.log").read_text()
    assert f"heartbeat ping success to http://127.0.0.1:{port}/… failed ({why}" in log
    if answer == "500":
        assert len(hc.requests) == 4   # one retry each for a 5xx
    _no_secret(stack, res, check)


# -- metrics ---------------------------------------------------------------------------------------
class _ScrapingPrometheus(PrometheusServer):
    """The sandbox's Prometheus, scraping a node_exporter instead of itself."""

    def __init__(self, base: Path, target: str):
        super().__init__(base, self_scrape=False)
        self.target = target

    def start(self, timeout: float = 60):
        self.data.mkdir(parents=True, exist_ok=True)
        (self.base / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{RULES / 'coderz-backup-rules.yml'}']\n"
            f"scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['{self.target}']\n")
        subprocess.run(self.start_command, check=True)
        wait_until(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, timeout=timeout,
                   interval=0.2, retry=httpx.HTTPError)
        return self


@pytest.fixture
def node_exporter(tmp_path):
    exe = shutil.which("prometheus-node-exporter")
    if exe is None:
        pytest.fail("prometheus-node-exporter is not installed: run scripts/setup.sh")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    port = free_port()
    proc = subprocess.Popen([exe, "--collector.disable-defaults", "--collector.textfile",
                             f"--collector.textfile.directory={textdir}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200,
                   timeout=30, interval=0.1, retry=httpx.HTTPError)
        yield textdir, f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _query(prom: PrometheusServer, expr: str) -> list[dict]:
    body = httpx.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_after_a_backup_prometheus_has_the_metrics_from_node_exporters_textfile(stack, node_exporter, tmp_path):
    textdir, target = node_exporter
    prom_file = textdir / "coderz_backup.prom"
    _with_monitor(stack, f'textfile = "{prom_file}"\n')
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"Monitor: metrics written to {prom_file}" in res.stdout
    assert oct(prom_file.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in textdir.iterdir()) == ["coderz_backup.prom"]
    m = stack.manifest()
    finished = dt.datetime.strptime(m["finished_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)

    # node_exporter accepts the file: no textfile error, our series in its /metrics
    page = httpx.get(f"http://{target}/metrics", timeout=5).text
    assert "node_textfile_scrape_error 0" in page
    [line] = [x for x in page.splitlines() if x.startswith("coderz_backup_last_success_timestamp_seconds ")]
    assert float(line.split()[1]) == finished.timestamp()   # node_exporter prints it as 1.79e+09

    prom = _ScrapingPrometheus(tmp_path / "prometheus", target).start()
    try:
        result = wait_until(lambda: _query(prom, "coderz_backup_last_success_timestamp_seconds"),
                            timeout=60, interval=0.5)
        [series] = result
        assert float(series["value"][1]) == finished.timestamp()
        assert series["metric"]["job"] == "node" and series["metric"]["instance"] == target
        [status] = _query(prom, "coderz_backup_last_status")
        assert status["value"][1] == "0"
        arts = {(s["metric"]["service"], s["metric"]["file"]): int(s["value"][1])
                for s in _query(prom, "coderz_backup_artifact_bytes")}
        assert arts == {(a["service"], a["path"]): a["bytes"] for a in m["artifacts"] if a["status"] == "ok"}
        durations = {s["metric"]["service"] for s in _query(prom, "coderz_backup_artifact_duration_seconds")}
        assert durations == {a["service"] for a in m["artifacts"]}
        [kept] = _query(prom, "coderz_backup_snapshots_kept")
        assert kept["value"][1] == str(len(stack.snapshots()))
        [took] = _query(prom, "coderz_backup_run_duration_seconds")
        assert 0 < float(took["value"][1]) < 600

        # the shipped rules load and evaluate on these series: after an ok run none fires
        # (absent() may be pending from an evaluation before the first scrape; it must clear)
        seen: dict = {}

        def evaluated_and_quiet():
            groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
            seen["rules"] = rules = [r for g in groups for r in g["rules"]]
            return rules and all(r["lastEvaluation"] > "2000" and r["state"] == "inactive" for r in rules)

        wait_until(evaluated_and_quiet, timeout=30, interval=0.5,
                   error=lambda _: AssertionError(f"rules not all evaluated and inactive: {seen.get('rules')}"))
        assert {r["name"]: r["health"] for r in seen["rules"]} == {n: "ok" for n in (
            "CoderzBackupTooOld", "CoderzBackupMetricsMissing", "CoderzBackupLastRunFailed",
            "CoderzBackupArtifactShrank", "CoderzBackupOffsiteFailed")}
    finally:
        prom.stop()


# -- the shipped alert rules ------------------------------------------------------------------------
def test_the_alert_rules_pass_promtool_check_and_their_unit_tests():
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is not installed"
    check = subprocess.run([promtool, "check", "rules", "coderz-backup-rules.yml"], cwd=RULES,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout
    test = subprocess.run([promtool, "test", "rules", "coderz-backup-rules.test.yml"], cwd=RULES,
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout and "FAILED" not in test.stdout
