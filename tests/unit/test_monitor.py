"""[monitor]: config validation, the textfile's exposition format, atomic writes, kept last success."""

from __future__ import annotations

import re
import stat

import pytest

from coderz_backup import config, monitor
from coderz_backup.errors import ConfigError

UUID = "5f0c1d2e-9a8b-4c7d-8e6f-1a2b3c4d5e6f"


def _load(tmp_path, body: str):
    path = tmp_path / "c.toml"
    path.write_text(body)
    return config.load(path, env={})


def test_a_ping_url_and_textfile_load_and_the_uuid_never_shows_in_the_config_repr(tmp_path):
    cfg = _load(tmp_path, f'[monitor]\nping_url = "https://hc-ping.com/{UUID}"\n'
                          f'textfile = "{tmp_path}/coderz_backup.prom"\n')
    assert cfg.monitor.ping_url.get_secret_value() == f"https://hc-ping.com/{UUID}"
    assert cfg.monitor.textfile == tmp_path / "coderz_backup.prom"
    assert cfg.monitor.ping_timeout_s == 10.0
    assert UUID not in repr(cfg) and UUID not in str(cfg.model_dump())


@pytest.mark.parametrize("url, why", [
    (f"ftp://hc-ping.com/{UUID}", "must be an http:// or https:// URL"),
    (f"hc-ping.com/{UUID}", "must be an http:// or https:// URL"),
    (f"https:///{UUID}", "has no host"),
    (f"https://hc-ping.com/{UUID}?x=1", "must not have a"),
])
def test_a_bad_ping_url_is_refused_without_repeating_the_secret(tmp_path, url, why):
    with pytest.raises(ConfigError, match=f"monitor.ping_url: Value error, {why}") as err:
        _load(tmp_path, f'[monitor]\nping_url = "{url}"\n')
    assert UUID not in str(err.value)


@pytest.mark.parametrize("path, why", [("relative/x.prom", "must be an absolute path"),
                                       ("/var/lib/x.txt", "must end in .prom")])
def test_a_textfile_must_be_an_absolute_prom_file(tmp_path, path, why):
    with pytest.raises(ConfigError, match=f"monitor.textfile: Value error, {why}"):
        _load(tmp_path, f'[monitor]\ntextfile = "{path}"\n')


def test_an_unknown_monitor_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"monitor.ping: unknown key"):
        _load(tmp_path, '[monitor]\nping = "https://x.example/1"\n')


def test_redacted_url_keeps_only_scheme_and_host():
    assert monitor.redact_url(f"https://hc-ping.com/{UUID}") == "https://hc-ping.com/…"
    assert monitor.redact_url(f"http://127.0.0.1:8000/ping/{UUID}") == "http://127.0.0.1:8000/…"


@pytest.mark.parametrize("status, offsite, want", [
    ("ok", [], "ok"), ("ok", [{"status": "ok"}], "ok"), ("ok", [{"status": "failed"}], "partial"),
    ("partial", [], "partial"), ("failed", [], "failed"), (None, [], "failed")])
def test_outcome_counts_a_lost_offsite_copy_as_partial(status, offsite, want):
    assert monitor.outcome_of(status, offsite) == want


def _render(**over):
    args = dict(run_ts=1_764_000_000, status="ok", last_success_ts=1_764_000_000, run_duration_s=12.5,
                snapshots_kept=3,
                artifacts=[{"service": "pg", "path": "pg.sql.gz", "status": "ok", "bytes": 2048, "duration_s": 1.25},
                           {"service": 'we"ird\\svc', "path": "a\nb", "status": "failed", "bytes": 0,
                            "duration_s": 0.5}],
                offsite=[{"stage": "offsite-s3", "status": "ok", "details": {"bytes": 4096}, "duration_s": 2.0}])
    args.update(over)
    return monitor.render_metrics(**args)


def test_the_textfile_has_help_and_type_for_every_family_and_escaped_labels():
    text = _render()
    lines = text.splitlines()
    names = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    assert {f"coderz_backup_{n}" for n in ("last_run_timestamp_seconds", "last_success_timestamp_seconds",
                                           "last_status", "run_duration_seconds", "snapshots_kept",
                                           "artifact_bytes", "artifact_ok", "artifact_duration_seconds",
                                           "offsite_status", "offsite_bytes", "offsite_duration_seconds",
                                           "offsite_last_success_timestamp_seconds")} == names
    for name in names:
        assert f"# HELP {name} " in text and f"# TYPE {name} gauge" in lines
    assert 'coderz_backup_artifact_bytes{service="pg",file="pg.sql.gz"} 2048' in lines
    assert 'coderz_backup_artifact_ok{service="we\\"ird\\\\svc",file="a\\nb"} 0' in lines
    assert not any(line.startswith("coderz_backup_artifact_bytes{service=\"we") for line in lines)  # failed: no size
    assert "coderz_backup_last_status 0" in lines and "coderz_backup_snapshots_kept 3" in lines
    assert 'coderz_backup_offsite_status{target="s3"} 0' in lines
    assert 'coderz_backup_offsite_last_success_timestamp_seconds{target="s3"} 1764000000' in lines
    assert text.endswith("\n")


def test_the_textfile_reads_back_including_escaped_labels(tmp_path):
    path = tmp_path / "m.prom"
    monitor.write_textfile(path, _render())
    got = monitor.read_textfile(path)
    assert got[("coderz_backup_artifact_ok", (("file", "a\nb"), ("service", 'we"ird\\svc')))] == 0
    assert got[("coderz_backup_run_duration_seconds", ())] == 12.5


def test_the_textfile_is_replaced_atomically_with_mode_0644(tmp_path):
    path = tmp_path / "m.prom"
    path.write_text("old\n")
    path.chmod(0o600)
    monitor.write_textfile(path, "new 1\n")
    assert path.read_text() == "new 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.prom"]   # no temp file left


def test_a_failed_run_keeps_the_last_success_of_the_previous_file(tmp_path):
    prom = tmp_path / "m.prom"
    monitor.write_textfile(prom, _render(last_success_ts=1_700_000_000))
    cfg = config.MonitorConfig(textfile=prom)
    mon = monitor.RunMonitor(cfg, None, tmp_path / "dest")
    mon.failed("the destination is locked")
    got = monitor.read_textfile(prom)
    assert got[("coderz_backup_last_success_timestamp_seconds", ())] == 1_700_000_000
    assert got[("coderz_backup_last_status", ())] == 2
    assert got[("coderz_backup_offsite_last_success_timestamp_seconds", (("target", "s3"),))] == 1_764_000_000
    assert not any(name == "coderz_backup_artifact_bytes" for name, _ in got)
    assert mon.notes == [f"metrics written to {prom}"]


def test_a_textfile_that_cannot_be_written_is_a_warning_not_an_error(tmp_path):
    cfg = config.MonitorConfig(textfile=tmp_path / "missing-dir" / "m.prom")
    mon = monitor.RunMonitor(cfg, None, tmp_path / "dest")
    mon.failed("boom")
    assert len(mon.notes) == 1
    assert mon.notes[0].startswith(f"⚠ metrics not written to {tmp_path}/missing-dir/m.prom: FileNotFoundError")


def test_an_unset_env_ping_url_is_a_warning_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("HC_URL_T", raising=False)
    cfg = config.MonitorConfig(ping_url="env:HC_URL_T")
    mon = monitor.RunMonitor(cfg, "rid-1")
    assert mon.ping("start") is False
    assert mon.notes == ["⚠ heartbeat ping start not sent: monitor.ping_url: environment variable HC_URL_T is "
                         "not set — the backup itself is unaffected"]


def test_the_ping_body_is_cut_at_the_healthchecks_limit_on_a_character_boundary():
    body = monitor._truncate("é" * 6000)
    assert len(body) <= monitor.BODY_LIMIT and len(body) == 10_000
    body.decode("utf-8")
    assert len(monitor._truncate("é" * 6000, limit=9_999)) == 9_998


def test_the_crash_hook_writes_status_2_once_and_not_for_a_run_that_reported_itself(tmp_path):
    import datetime as dt
    from types import SimpleNamespace as NS

    from coderz_backup.flows import alerts

    prom = tmp_path / "m.prom"
    conf = tmp_path / "c.toml"
    conf.write_text(f'dest = "{tmp_path / "dest"}"\n[monitor]\ntextfile = "{prom}"\n')
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=30)
    crashed = NS(id=uuid_str(), parameters={"config": str(conf)}, start_time=started, name="brave-otter")
    alerts.alert_on_failure(NS(name="coderz-backup"), crashed, NS(message="Execution was interrupted", name="Crashed"))
    got = monitor.read_textfile(prom)
    assert got[("coderz_backup_last_status", ())] == 2
    assert got[("coderz_backup_last_success_timestamp_seconds", ())] == 0
    assert got[("coderz_backup_run_duration_seconds", ())] >= 30

    reported = NS(id=uuid_str(), parameters={"config": str(conf)}, start_time=started, name="calm-owl")
    alerts.outcome_monitored(str(reported.id))
    prom.unlink()
    alerts.alert_on_failure(NS(name="coderz-backup"), reported, NS(message="1 of 4 artifacts failed", name="Failed"))
    restore = NS(id=uuid_str(), parameters={"config": str(conf)}, start_time=started, name="shy-elk")
    alerts.alert_on_failure(NS(name="coderz-restore"), restore, NS(message="x", name="Crashed"))
    assert not prom.exists()   # the run wrote its own metrics; a restore's crash is not the nightly backup's


def uuid_str() -> str:
    import uuid

    return str(uuid.uuid4())


def test_a_pushgateway_url_loads_with_the_default_job_and_no_trailing_slash(tmp_path):
    cfg = _load(tmp_path, '[monitor]\npushgateway = "http://127.0.0.1:9091/"\npushgateway_instance = "db-host-1"\n')
    assert cfg.monitor.pushgateway == "http://127.0.0.1:9091"
    assert cfg.monitor.pushgateway_job == "coderz_backup"
    assert monitor.push_url(cfg.monitor.pushgateway, cfg.monitor.pushgateway_job, "db-host-1") == \
        "http://127.0.0.1:9091/metrics/job/coderz_backup/instance/db-host-1"
    assert monitor.push_url("http://pgw.example/prefix/", "j", "a b") == \
        "http://pgw.example/prefix/metrics/job/j/instance/a%20b"


@pytest.mark.parametrize("body, why", [
    ('pushgateway = "pgw:9091"', "monitor.pushgateway: Value error, must be an http:// or https:// URL"),
    ('pushgateway = "http://u:pw@127.0.0.1:9091"', "monitor.pushgateway: Value error, must not hold a user"),
    ('pushgateway = "http://127.0.0.1:9091/metrics/job/x"', "monitor.pushgateway: Value error, is the Pushgateway's base URL"),
    ('pushgateway = "http://127.0.0.1:9091?x=1"', "monitor.pushgateway: Value error, must not have a"),
    ('pushgateway = "http://127.0.0.1:x"', "monitor.pushgateway: Value error, not a valid URL"),
    ('pushgateway_job = "my job/1"', "monitor.pushgateway_job: String should match pattern"),
])
def test_a_bad_pushgateway_key_is_refused(tmp_path, body, why):
    with pytest.raises(ConfigError, match=re.escape(why)) as err:
        _load(tmp_path, f"[monitor]\n{body}\n")
    assert "pw@" not in str(err.value)


def test_a_push_nobody_answers_is_a_warning_and_the_textfile_is_still_written(tmp_path):
    from coderz_backup.sandbox import free_port

    prom, port = tmp_path / "m.prom", free_port()
    cfg = config.MonitorConfig(textfile=prom, pushgateway=f"http://127.0.0.1:{port}", pushgateway_instance="h1",
                               ping_retries=0)
    mon = monitor.RunMonitor(cfg, None, tmp_path / "dest")
    assert mon.active
    mon.failed("boom")
    assert monitor.read_textfile(prom)[("coderz_backup_last_status", ())] == 2
    assert mon.notes[0] == f"metrics written to {prom}"
    assert mon.notes[1].startswith(f"⚠ metrics push to http://127.0.0.1:{port} (job coderz_backup, instance h1) "
                                   "failed (ConnectError: ")
    assert mon.notes[1].endswith("— the backup itself is unaffected")
