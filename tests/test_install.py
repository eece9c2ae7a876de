"""`coderz-backup install --prefix DIR`: the product document's layout, idempotent, edits kept;
then the document's commands against the installed files (backup.sh, restore.sh --list, and
`prefect --no-prompt deploy --all` from the flows folder on the session's Prefect server)."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from coderz_backup.config import load

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "coderz-backup"
FILES = {   # path under the prefix → mode
    "opt/coderz/backup/backup.sh": 0o755,
    "opt/coderz/backup/restore.sh": 0o755,
    "opt/coderz/backup/coderz-backup.toml": 0o600,
    "opt/coderz/configs/prefect/flows/prefect.yaml": 0o644,
    "opt/coderz/configs/prefect/flows/backup_flow.py": 0o644,
}


def _install(prefix: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "coderz_backup", "install", "--prefix", str(prefix)],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def _status(out: str) -> dict[str, str]:
    """{path under the prefix: first word of its line} from install's output."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^[✓! ] (installed|updated|unchanged|kept)\s+(\S+)", line)
        if m:
            rows[m.group(2)] = m.group(1)
    return rows


def _snapshot(prefix: Path) -> dict[str, tuple[bytes, int]]:
    return {rel: ((prefix / rel).read_bytes(), (prefix / rel).stat().st_mtime_ns) for rel in FILES}


def test_install_lays_out_the_documents_files_and_a_rerun_changes_nothing(tmp_path):
    prefix = tmp_path / "host"
    prefix.mkdir()
    res = _install(prefix)
    assert _status(res.stdout) == {str(prefix / rel): "installed" for rel in FILES}
    for rel, mode in FILES.items():
        assert stat.S_IMODE((prefix / rel).stat().st_mode) == mode, rel
    # the next steps name the files to edit and the document's deploy command from the flows folder
    flows = prefix / "opt/coderz/configs/prefect/flows"
    assert f"cd {flows}" in res.stdout and "prefect --no-prompt deploy --all" in res.stdout
    assert f"bash {prefix}/opt/coderz/backup/backup.sh --keep 14" in res.stdout

    # the scripts call the coderz-backup that ran install, by its absolute path, with the installed config
    console = Path(sys.executable).with_name("coderz-backup")
    backup_sh = (prefix / "opt/coderz/backup/backup.sh").read_text()
    assert f"coderz_backup=({console})" in backup_sh
    assert f"config={prefix}/opt/coderz/backup/coderz-backup.toml" in backup_sh
    assert backup_sh.rstrip().endswith('exec "${coderz_backup[@]}" backup "$@"')
    assert (prefix / "opt/coderz/backup/restore.sh").read_text().rstrip().endswith(
        'exec "${coderz_backup[@]}" restore "$@"')

    # the config is valid TOML pointing at the prefix's snapshot folder and key
    toml_path = prefix / "opt/coderz/backup/coderz-backup.toml"
    data = tomllib.loads(toml_path.read_text())
    assert data == {"dest": f"{prefix}/opt/coderz/backup/snapshots", "keep_days": 7,
                    "signing_key": f"{prefix}/opt/coderz/backup/keys/signing.key"}
    cfg = load(toml_path, env={"PG_PREFECT_PASSWORD": "x", "PG_CODERAPI_PASSWORD": "x", "GRAFANA_TOKEN": "x",
                               "ELASTIC_PASSWORD": "x", "APISIX_ADMIN_KEY": "x"})
    assert cfg.dest == prefix / "opt/coderz/backup/snapshots" and cfg.keep_days == 7

    # the deployment file: the repository's prefect.yaml, except the daily entrypoint is backup_flow.py
    installed = yaml.safe_load((flows / "prefect.yaml").read_text())
    repo = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [daily] = [d for d in installed["deployments"] if d["name"] == "coderz-backup-daily"]
    assert daily["entrypoint"] == "backup_flow.py:coderz_backup"
    daily["entrypoint"] = "coderz_backup.flows.backup:coderz_backup"
    assert installed == repo

    record = json.loads((prefix / "opt/coderz/backup/.coderz-install.json").read_text())
    assert set(record["files"]) == set(FILES)

    before = _snapshot(prefix)
    again = _install(prefix)
    assert _status(again.stdout) == {str(prefix / rel): "unchanged" for rel in FILES}
    assert _snapshot(prefix) == before


def test_a_rerun_keeps_edited_files_updates_untouched_ones_and_never_takes_over_an_existing_config(tmp_path):
    prefix = tmp_path / "host"
    prefix.mkdir()
    _install(prefix)
    toml_path = prefix / "opt/coderz/backup/coderz-backup.toml"
    backup_sh = prefix / "opt/coderz/backup/backup.sh"
    restore_sh = prefix / "opt/coderz/backup/restore.sh"
    edited_toml = toml_path.read_text().replace("keep_days = 7", "keep_days = 21")
    toml_path.write_text(edited_toml)
    backup_sh.write_text(backup_sh.read_text() + "rsync -a /opt/coderz/backup/snapshots/latest/ remote:/b/\n")
    edited_sh = backup_sh.read_text()
    # restore.sh as an older install wrote it: the file and the record agree, so it gets updated
    record_path = prefix / "opt/coderz/backup/.coderz-install.json"
    current = restore_sh.read_text()
    old = current.replace("exec ", "# older version\nexec ")
    restore_sh.write_text(old)
    record = json.loads(record_path.read_text())
    record["files"]["opt/coderz/backup/restore.sh"] = hashlib.sha256(old.encode()).hexdigest()
    record_path.write_text(json.dumps(record))

    res = _install(prefix)
    status = _status(res.stdout)
    assert status[str(toml_path)] == "kept" and status[str(backup_sh)] == "kept"
    assert f"{toml_path} (edited since install; the new version was not written)" in res.stdout
    assert status[str(restore_sh)] == "updated"
    assert toml_path.read_text() == edited_toml and backup_sh.read_text() == edited_sh
    assert restore_sh.read_text() == current
    assert stat.S_IMODE(restore_sh.stat().st_mode) == 0o755
    # still kept on the next run (the record keeps the installed sha, not the edited one)
    assert _status(_install(prefix).stdout)[str(toml_path)] == "kept"

    # a host that already has its own config: install writes everything else, never that file
    other = tmp_path / "other"
    own = other / "opt/coderz/backup/coderz-backup.toml"
    own.parent.mkdir(parents=True)
    own.write_text('dest = "/srv/snapshots"\n')
    res = _install(other)
    assert f"{own} (was there before install; not written)" in res.stdout
    assert own.read_text() == 'dest = "/srv/snapshots"\n'
    assert _status(res.stdout)[str(other / "opt/coderz/backup/backup.sh")] == "installed"
    other_record = json.loads((other / "opt/coderz/backup/.coderz-install.json").read_text())["files"]
    assert "opt/coderz/backup/coderz-backup.toml" not in other_record   # a later run still leaves it alone
    assert f"{own} (was there before install; not written)" in _install(other).stdout


def test_install_into_a_missing_prefix_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "coderz_backup", "install", "--prefix", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2
    assert f"{tmp_path / 'nope'}: --prefix must be an existing folder" in res.stderr
    assert not (tmp_path / "nope").exists()

    # a file where the document's folder belongs: one line naming it, nothing written, exit 2
    blocked = tmp_path / "blocked"
    (blocked / "opt" / "coderz").mkdir(parents=True)
    (blocked / "opt" / "coderz" / "backup").write_text("not a folder\n")
    res = subprocess.run([sys.executable, "-m", "coderz_backup", "install", "--prefix", str(blocked)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert (f"✗ {blocked}/opt/coderz/backup/backup.sh: cannot install: File exists: {blocked}/opt/coderz/backup"
            in res.stderr)
    assert "Traceback" not in res.stderr
    assert (blocked / "opt" / "coderz" / "backup").read_text() == "not a folder\n"


def _configs_service(prefix: Path) -> Path:
    """Append a configs service (the prefix's /opt/coderz/configs, with a compose file) to the installed toml."""
    conf = prefix / "opt/coderz/configs"
    (conf / "docker-compose.yml").write_text("services: {}\n")
    toml_path = prefix / "opt/coderz/backup/coderz-backup.toml"
    toml_path.write_text(toml_path.read_text() + f'\n[services.configs]\nkind = "configs"\npaths = ["{conf}"]\n')
    return toml_path


def test_installed_backup_sh_makes_a_snapshot_and_restore_sh_lists_it(tmp_path, cli_env):
    prefix = tmp_path / "host"
    prefix.mkdir()
    _install(prefix)
    _configs_service(prefix)
    # the installed config decides: the config path (from the script) and the signing key (from the toml)
    env = {k: v for k, v in cli_env.items() if k not in ("CODERZ_BACKUP_CONFIG", "CODERZ_BACKUP_SIGNING_KEY")}
    env["PATH"] = "/usr/bin:/bin"   # the scripts must not need coderz-backup on PATH

    res = subprocess.run(["bash", str(prefix / "opt/coderz/backup/backup.sh"), "--keep", "14"], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Backup Complete" in out and "✓ configs.tar.gz" in out
    snaps = prefix / "opt/coderz/backup/snapshots"
    latest = snaps / "latest"
    m = json.loads((latest / "manifest.json").read_text())
    assert (m["status"], m["passed"], m["failed"], m["keep_days"]) == ("ok", 1, 0, 14)
    assert (latest / "configs.tar.gz").stat().st_size > 0 and (latest / "backup.log").is_file()
    assert (prefix / "opt/coderz/backup/keys/signing.key").is_file()

    res = subprocess.run(["bash", str(prefix / "opt/coderz/backup/restore.sh"), "--list"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    [row] = [line for line in res.stdout.splitlines() if line.startswith(m["snapshot"])]
    assert row.split()[1] == "ok"


def test_prefect_deploy_all_from_the_installed_flows_folder_and_a_worker_runs_backup_flow_py(tmp_path, cli_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    from coderz_backup.setup import setup

    prefix = tmp_path / "host"
    prefix.mkdir()
    _install(prefix)
    toml_path = _configs_service(prefix)
    flows = prefix / "opt/coderz/configs/prefect/flows"
    names = ["coderz-backup/coderz-backup-daily", "coderz-restore/coderz-restore", "coderz-drill/coderz-drill-weekly"]

    def forget():
        with get_client(sync_client=True) as c:
            for name in names:
                try:
                    c.delete_deployment(c.read_deployment_by_name(name).id)
                except ObjectNotFound:
                    pass

    forget()
    setup()   # the work pool (left as it is when it exists)
    env = dict(cli_env, PWD="/nonexistent/stale-pwd", COLUMNS="250")
    try:
        res = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=flows, env=env,
                             capture_output=True, text=True, timeout=240, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        with get_client(sync_client=True) as c:
            dep = c.read_deployment_by_name("coderz-backup/coderz-backup-daily")
            sched = dep.schedules[0]
            c.update_deployment_schedule(dep.id, sched.id, active=False)   # no 03:00 runs in this test
        assert dep.entrypoint == "backup_flow.py:coderz_backup"
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                   {"directory": str(flows.resolve())}}]
        assert set(dep.parameter_openapi_schema["properties"]) >= {"dest", "keep"}

        res = subprocess.run([PREFECT, "deployment", "run", "coderz-backup/coderz-backup-daily"], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", res.stdout).group(1)
        worker_env = dict(cli_env, CODERZ_BACKUP_CONFIG=str(toml_path), PYTHONUNBUFFERED="1")
        worker = subprocess.run([PREFECT, "worker", "start", "--pool", POOL, "--run-once"], cwd=tmp_path,
                                env=worker_env, capture_output=True, text=True, timeout=400, check=False)
        log = worker.stdout + worker.stderr
        assert worker.returncode == 0, log[-3000:]
        with get_client(sync_client=True) as c:
            run = c.read_flow_run(run_id)
        assert run.state.type == StateType.COMPLETED, f"{run.state!r}\n{log[-3000:]}"
        m = json.loads((prefix / "opt/coderz/backup/snapshots/latest/manifest.json").read_text())
        assert (m["status"], m["flow_run_id"]) == ("ok", run_id)
    finally:
        forget()
