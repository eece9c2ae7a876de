"""[monitor] end to end: heartbeat pings to a local HTTP server, the node_exporter textfile read by
Debian's prometheus-node-exporter and scraped by a real Prometheus, the same metrics pushed to
Debian's prometheus-pushgateway, the shipped alert rules checked with promtool and firing in a real
Prometheus, and every panel of the shipped Grafana dashboard evaluated by it."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from helpers import refused_port, run_cli

from coderz_backup.monitor import read_textfile, render_metrics
from coderz_backup.sandbox import PrometheusServer, free_port
from coderz_backup.snapshot import SnapshotStore
from coderz_backup.waiting import wait_until

RULES = Path(__file__).resolve().parents[1] / "deployments" / "prometheus"
DASHBOARD = Path(__file__).resolve().parents[1] / "deployments" / "grafana" / "coderz-backup-dashboard.json"


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

            do_POST = do_GET = do_PUT = _record

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
    env = dict(stack.env, PREFECT_API_URL=f"http://127.0.0.1:{refused_port()}/api", CODERZ_BACKUP_API_TIMEOUT_S="2")
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
def test_a_ping_or_push_that_fails_never_fails_the_backup_and_the_report_says_so(stack, answer):
    check = str(uuid.uuid4())
    with PingServer(status=500) as hc, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)   # connections complete in the kernel's backlog; nothing ever reads them
        port = {"500": hc.port, "nothing listens": refused_port(), "never answers": silent.getsockname()[1]}[answer]
        timeout = 1 if answer == "never answers" else 10
        _with_monitor(stack, f'ping_url = "http://127.0.0.1:{port}/{check}"\nping_timeout_s = {timeout}\n'
                             f'pushgateway = "http://127.0.0.1:{port}"\npushgateway_instance = "h1"\n')
        res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert stack.manifest()["status"] == "ok"
    why = {"500": "HTTP 500", "nothing listens": "ConnectError", "never answers": "ReadTimeout"}[answer]
    for kind in ("start", "success"):
        line = f"Monitor: ⚠ heartbeat ping {kind} to http://127.0.0.1:{port}/… failed ({why}"
        assert line in res.stdout, res.stdout
    push = f"metrics push to http://127.0.0.1:{port} (job coderz_backup, instance h1) failed ({why}"
    assert f"Monitor: ⚠ {push}" in res.stdout, res.stdout
    log = (stack.dest / "latest" / "backup.log").read_text()
    assert f"heartbeat ping success to http://127.0.0.1:{port}/… failed ({why}" in log
    assert push in log
    if answer == "500":   # one retry each for a 5xx
        assert [r["method"] for r in hc.requests].count("POST") == 4
        assert [r["path"] for r in hc.requests if r["method"] == "PUT"] == ["/metrics/job/coderz_backup/instance/h1"] * 2
    _no_secret(stack, res, check)


# -- metrics ---------------------------------------------------------------------------------------
class _ScrapingPrometheus(PrometheusServer):
    """The sandbox's Prometheus, scraping a node_exporter (or a Pushgateway: ``honor_labels``, so the
    pushed job/instance stay) instead of itself, with the shipped rules evaluated every second."""

    def __init__(self, base: Path, target: str, job: str = "node", honor_labels: bool = False):
        super().__init__(base, self_scrape=False)
        self.target, self.job, self.honor_labels = target, job, honor_labels

    def start(self, timeout: float = 60):
        self.data.mkdir(parents=True, exist_ok=True)
        (self.base / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{RULES / 'coderz-backup-rules.yml'}']\n"
            f"scrape_configs:\n  - job_name: {self.job}\n    honor_labels: {str(self.honor_labels).lower()}\n"
            f"    static_configs:\n      - targets: ['{self.target}']\n")
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


@pytest.fixture
def pushgateway(tmp_path):
    """Debian's prometheus-pushgateway on a free 127.0.0.1 port, in memory only (no persistence file)."""
    exe = shutil.which("prometheus-pushgateway")
    if exe is None:
        pytest.fail("prometheus-pushgateway is not installed: run scripts/setup.sh")
    port = free_port()
    with open(tmp_path / "pushgateway.log", "wb") as log:
        proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200,
                   timeout=30, interval=0.1, retry=httpx.HTTPError)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


FAMILIES = {f"coderz_backup_{n}" for n in (
    "last_run_timestamp_seconds", "last_success_timestamp_seconds", "last_status", "run_duration_seconds",
    "snapshots_kept", "artifact_bytes", "artifact_ok", "artifact_duration_seconds", "offsite_status",
    "offsite_bytes", "offsite_duration_seconds", "offsite_last_success_timestamp_seconds")}


def test_a_pushed_backup_is_in_prometheus_and_every_dashboard_panel_has_data(stack, pushgateway, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()   # an off-site copy too, so the dashboard's off-site panels have something to show
    stack.config.write_text(stack.config.read_text() + f'\n[offsite.usb]\nkind = "dir"\npath = "{drive}"\n')
    _with_monitor(stack, f'pushgateway = "{pushgateway}"\n')
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    host = socket.gethostname()
    assert f"Monitor: metrics pushed to {pushgateway} (job coderz_backup, instance {host})" in res.stdout
    m = stack.manifest()
    finished = dt.datetime.strptime(m["finished_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)

    prom = _ScrapingPrometheus(tmp_path / "prometheus", pushgateway.removeprefix("http://"), job="pushgateway",
                               honor_labels=True).start()
    try:
        [series] = wait_until(lambda: _query(prom, "coderz_backup_last_success_timestamp_seconds"),
                              timeout=60, interval=0.5)
        assert series["metric"]["job"] == "coderz_backup" and series["metric"]["instance"] == host
        assert float(series["value"][1]) == finished.timestamp()
        names = {s["metric"]["__name__"] for s in _query(prom, '{__name__=~"coderz_backup_.+"}')}
        assert names == FAMILIES   # the textfile's families, every one
        [off] = _query(prom, "coderz_backup_offsite_status")
        assert off["metric"]["target"] == "usb" and off["value"][1] == "0"
        arts = {(s["metric"]["service"], s["metric"]["file"]): int(s["value"][1])
                for s in _query(prom, "coderz_backup_artifact_bytes")}
        assert arts == {(a["service"], a["path"]): a["bytes"] for a in m["artifacts"] if a["status"] == "ok"}

        # the shipped dashboard: its host variable lists this host, and every panel's query, with the
        # variable set to this host or to All, is valid PromQL that returns data (a renamed metric fails here)
        dash = json.loads(DASHBOARD.read_text())
        assert dash["schemaVersion"] >= 39
        assert [(i["name"], i["type"], i["pluginId"]) for i in dash["__inputs"]] == \
            [("DS_PROMETHEUS", "datasource", "prometheus")]
        ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        [var] = dash["templating"]["list"]
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"]).groups()
        listed = httpx.get(f"{prom.url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=5).json()
        assert (var["name"], var["datasource"], listed["data"]) == ("instance", ds, [host])
        panels = dash["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        assert {"Time since last successful backup", "Last run status", "Artifact size", "Backup time per service",
                "Snapshots kept", "Off-site copies"} <= {p["title"] for p in panels}
        for panel in panels:
            assert panel["datasource"] == ds and panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == ds
                for value in (host, var["allValue"]):
                    expr = target["expr"].replace("$instance", value)
                    assert _query(prom, expr), f"panel {panel['title']!r}: {expr} returned no data"
    finally:
        prom.stop()


def _alerts(prom: PrometheusServer) -> dict[str, dict]:
    body = httpx.get(f"{prom.url}/api/v1/alerts", timeout=5).json()
    return {a["labels"]["alertname"]: a for a in body["data"]["alerts"]}


def test_a_missed_night_and_a_failed_run_fire_the_shipped_alerts_in_prometheus(stack, node_exporter, tmp_path):
    textdir, target = node_exporter
    prom_file = textdir / "coderz_backup.prom"
    # A real run's clock cannot be set back, and the snapshot's finished_at is signed in its manifest;
    # so the last ok night is the textfile that run left behind 30 h ago, rendered by render_metrics
    # as every run renders it. Tonight's run is real and cannot start (another run holds the lock): it
    # keeps the last success from that file and writes status 2, as on a host whose backups stopped.
    long_ago = int(time.time()) - 30 * 3600
    prom_file.write_text(render_metrics(run_ts=long_ago, status="ok", last_success_ts=long_ago, run_duration_s=95,
                                        snapshots_kept=7))
    _with_monitor(stack, f'textfile = "{prom_file}"\n')
    store = SnapshotStore(stack.dest)
    store.prepare()
    with store.lock():
        res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 2, res.stdout + res.stderr
    now = read_textfile(prom_file)
    assert now[("coderz_backup_last_success_timestamp_seconds", ())] == long_ago
    assert now[("coderz_backup_last_status", ())] == 2

    # Both rules have no `for:`, so they fire at their first evaluation after the scrape (every
    # second here). Where the 26 h line lies (quiet at 25 h, firing at 27 h) is proven by the
    # promtool unit tests in coderz-backup-rules.test.yml.
    prom = _ScrapingPrometheus(tmp_path / "prometheus", target).start()
    try:
        wanted = ("CoderzBackupTooOld", "CoderzBackupLastRunFailed")
        seen: dict = {}

        def firing():
            seen["alerts"] = alerts = _alerts(prom)
            return all(alerts.get(name, {}).get("state") == "firing" for name in wanted)

        wait_until(firing, timeout=60, interval=0.5,
                   error=lambda _: AssertionError(f"not both firing: {seen.get('alerts')}"))
        old, failed = (seen["alerts"][name] for name in wanted)
        labels = {"severity": "critical", "instance": target, "job": "node"}
        assert old["labels"] == dict(labels, alertname="CoderzBackupTooOld")
        assert old["annotations"]["summary"] == f"No successful Coderz backup on {target} for more than 26 h"
        assert re.fullmatch(r"Last successful backup 1d 6h \d+m \d+s ago\.", old["annotations"]["description"])
        assert failed["labels"] == dict(labels, alertname="CoderzBackupLastRunFailed")
        assert failed["annotations"]["description"].startswith("coderz_backup_last_status is 2 ")
        assert "CoderzBackupMetricsMissing" not in seen["alerts"] or \
            seen["alerts"]["CoderzBackupMetricsMissing"]["state"] != "firing"
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
