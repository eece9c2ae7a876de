"""README promises of the CLI and configuration that had no test (issue 18): ``verify --json``,
``config check``'s one-line summary, repeated ``--only``, per-service ``timeout_s``, the
``docker = true`` defaults (the APISIX etcd through ``kubectl exec``), etcd through
``exec_prefix``, "memory stays flat", and rotation's keep reasons in ``backup.log``.
Real servers (PostgreSQL, Redis, etcd 3.4, the Prefect API) through the suite's fixtures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_cli

from coderz_backup.snapshot import SNAPSHOT_NAME

etcd_needed = pytest.mark.skipif(not (shutil.which("etcd") and shutil.which("etcdctl")),
                                 reason="etcd-server / etcd-client not installed (scripts/setup.sh)")


def _backup(stack, *extra, env=None):
    res = run_cli(["backup", "--config", str(stack.config), *extra], env or stack.env)
    return res


# -- verify --json ------------------------------------------------------------------------


def test_verify_json_has_the_snapshot_its_signature_and_one_check_per_artifact(stack):
    res = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    snap = os.readlink(stack.dest / "latest")
    manifest = stack.manifest()
    key = run_cli(["key", "show", "--config", str(stack.config)], stack.env)
    assert key.returncode == 0, key.stderr
    public = key.stdout.strip()
    assert public.startswith("ed25519:")

    v = run_cli(["verify", snap, "--config", str(stack.config), "--json"], stack.env)
    assert v.returncode == 0, v.stdout + v.stderr
    out = json.loads(v.stdout)   # the whole stdout is the JSON document
    assert set(out) == {"snapshot", "ok", "signed", "signing_key", "artifacts"}
    assert out["snapshot"] == snap and out["ok"] is True and out["signed"] is True
    assert out["signing_key"] == public == manifest["signing_key"]
    assert [(a["service"], a["path"]) for a in out["artifacts"]] == \
        [(a["service"], a["path"]) for a in manifest["artifacts"]]
    for a in out["artifacts"]:
        assert set(a) == {"service", "path", "ok", "detail"} and a["ok"] is True and a["detail"], a

    # one flipped byte: that artifact is not ok, the others still are, exit 1
    rdb = stack.dest / snap / "redis.rdb"
    data = bytearray(rdb.read_bytes())
    data[len(data) // 2] ^= 0x01
    rdb.write_bytes(bytes(data))
    v = run_cli(["verify", "--config", str(stack.config), "--json"], stack.env)
    assert v.returncode == 1, v.stdout + v.stderr
    out = json.loads(v.stdout)
    assert out["ok"] is False and out["snapshot"] == snap
    by_path = {a["path"]: a for a in out["artifacts"]}
    assert by_path["redis.rdb"]["ok"] is False and "sha256" in by_path["redis.rdb"]["detail"]
    assert all(a["ok"] for p, a in by_path.items() if p != "redis.rdb")


# -- config check ---------------------------------------------------------------------------


def test_config_check_prints_its_one_line_summary(stack):
    stack.config.write_text(stack.config.read_text().replace(
        "retries = 1\n", "retries = 1\nkeep_days = 9\nkeep_weekly = 4\nkeep_monthly = 12\n", 1))
    res = run_cli(["config", "check", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == (f"✓ {stack.config}: valid — dest {stack.dest}, keep 9 days + 4 weekly, 12 monthly, "
                          "4 service(s): postgres-prefect, postgres-coderapi, redis, configs\n")
    assert not (stack.dest).exists()   # a check writes nothing


def test_config_check_lists_every_problem_at_once_with_the_file_name(stack, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('keep_days = "soon"\n[services.redis]\nkind = "redis"\nport = "x"\n'
                   '[services.x]\nkind = "no-such-kind"\n')
    res = run_cli(["config", "check", "--config", str(bad)], stack.env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith(f"✗ {bad}: 3 problem(s):\n")
    lines = res.stderr.splitlines()[1:]
    assert [ln.split(":")[0].strip() for ln in lines] == ["- keep_days", "- services.redis.port", "- services.x"]
    assert "unknown kind" in lines[2]
    assert res.stdout == ""


# -- --only a --only b ------------------------------------------------------------------------


def test_repeated_only_backs_up_exactly_those_services(stack):
    res = _backup(stack, "--only", "redis", "--only", "configs")
    assert res.returncode == 0, res.stdout + res.stderr
    m = stack.manifest()
    assert sorted(a["service"] for a in m["artifacts"]) == ["configs", "redis"]
    assert sorted(p.name for p in (stack.dest / "latest").iterdir() if not p.name.startswith(("manifest", "backup"))) \
        == ["configs.tar.gz", "redis.rdb"]
    assert "PostgreSQL" not in res.stdout and "✓ redis.rdb" in res.stdout and "✓ configs.tar.gz" in res.stdout


# -- per-service timeout_s ---------------------------------------------------------------------


def test_a_service_slower_than_its_timeout_fails_with_a_timeout_and_the_others_complete(stack, tmp_path):
    # pg_dump behind a prefix that first sleeps far longer than the service's timeout_s
    slow = ["sh", "-c", 'sleep 120; exec "$@"', "slow"]
    cfg = stack.config.read_text().replace(
        "[services.postgres-coderapi]\n",
        f"[services.postgres-coderapi]\ntimeout_s = 2\nexec_prefix = {json.dumps(slow)}\n")
    stack.config.write_text(cfg)
    started = time.monotonic()
    res = _backup(stack)
    took = time.monotonic() - started
    assert res.returncode == 1, res.stdout + res.stderr
    assert took < 100, f"the backup took {took:.0f}s: the slow dump was not cut off at its timeout_s"
    m = stack.manifest()
    by = {a["service"]: a for a in m["artifacts"]}
    assert m["status"] == "partial"
    assert by["postgres-coderapi"]["status"] == "failed"
    assert re.search(r"did not finish within 2s and was killed", by["postgres-coderapi"]["error"]), by
    assert all(by[s]["status"] == "ok" for s in ("postgres-prefect", "redis", "configs")), by
    assert not (stack.dest / "latest" / "postgres-coderapi.sql.gz").exists()
    # the sleeping prefix was killed with its process group, not left behind
    leftovers = subprocess.run(["pgrep", "-f", 'sleep 120; exec "\\$@"'], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout


# -- docker = true defaults and etcd through kubectl exec / exec_prefix ------------------------


def test_docker_true_points_the_built_in_services_at_the_stack_containers(tmp_path, monkeypatch):
    from coderz_backup.access.docker import DockerAccess
    from coderz_backup.access.prefix import PrefixAccess
    from coderz_backup.config import load
    from coderz_backup.services import create

    f = tmp_path / "c.toml"
    f.write_text(f'dest = "{tmp_path / "snaps"}"\ndocker = true\n')
    cfg = load(str(f))
    want = {"postgres-prefect": "coderz-postgres", "postgres-coderapi": "coderz-postgres", "redis": "coderz-redis",
            "grafana": "coderz-grafana", "prometheus": "coderz-prometheus",
            "elasticsearch": "coderz-elasticsearch"}
    for name, container in want.items():
        assert cfg.services[name].container == container, name
        assert isinstance(create(name, cfg.services[name]).access, DockerAccess), name
    assert cfg.services["redis"].data_dir == "/data"
    etcd = cfg.services["etcd-apisix"]
    assert etcd.method == "etcdctl" and etcd.container is None
    assert etcd.exec_prefix == ["kubectl", "exec", "-i", "-n", "apisix", "apisix-etcd-0", "--"]
    access = create("etcd-apisix", etcd).access
    assert isinstance(access, PrefixAccess) and access.description == "via kubectl exec -i -n apisix apisix-etcd-0 --"
    # without docker = true the same built-in services run on this host
    f.write_text(f'dest = "{tmp_path / "snaps"}"\n')
    plain = load(str(f))
    assert plain.services["postgres-prefect"].container is None and plain.services["etcd-apisix"].exec_prefix is None


def _fake_pod(tmp_path: Path, name: str, expect: list[str]) -> tuple[Path, Path]:
    """A command standing in for ``kubectl``/a pod exec: it records its argv, insists on the
    ``expect``\\ ed prefix arguments and runs the rest on this host (where the real etcd is)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    calls = tmp_path / f"{name}-calls.jsonl"
    tool = bindir / name
    tool.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"expect = {expect!r}\n"
        f"with open({str(calls)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:1 + len(expect)] != expect:\n"
        "    sys.exit('unexpected prefix: ' + repr(sys.argv[1:]))\n"
        "argv = sys.argv[1 + len(expect):]\n"
        "os.execvp(argv[0], argv)\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return bindir, calls


@pytest.fixture
def etcd(tmp_path):
    from etcd_server import EtcdServer

    srv = EtcdServer(tmp_path / "etcd").start()
    for i in range(1, 21):
        srv.put(f"/apisix/routes/{i}".encode(), json.dumps({"id": str(i), "uri": f"/r{i}/*"}).encode())
    yield srv
    srv.stop()


def _restored_keys(svc, snap_file: Path, base: Path) -> dict:
    from etcd_server import EtcdServer

    new = EtcdServer(base, name="restored")
    data = base / "restored-data"
    svc.restore(snap_file, data_dir=str(data), name=new.name, peer_url=new.peer_url)
    new.data = data
    new.start()
    try:
        return new.everything()
    finally:
        new.stop()


@etcd_needed
def test_docker_true_etcd_snapshot_runs_etcdctl_through_kubectl_exec(etcd, tmp_path, monkeypatch):
    from coderz_backup.config import load
    from coderz_backup.services import create

    bindir, calls = _fake_pod(tmp_path, "kubectl", ["exec", "-i", "-n", "apisix", "apisix-etcd-0", "--"])
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    f = tmp_path / "c.toml"
    f.write_text(f'dest = "{tmp_path / "snaps"}"\ndocker = true\n')
    default = load(str(f)).services["etcd-apisix"]
    # the member of this test instead of the pod's own 127.0.0.1:2379; everything else is the default
    svc = create("etcd-apisix", default.model_copy(update={"endpoint": etcd.url}))
    out = tmp_path / "out"
    out.mkdir()
    [res] = svc.backup(out)
    assert res.status == "ok", res
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    saves = [a for a in argvs if "snapshot" in a and "save" in a]
    assert saves, argvs
    prefix = ["exec", "-i", "-n", "apisix", "apisix-etcd-0", "--"]
    assert all(a[:len(prefix)] == prefix for a in argvs), argvs
    # behind the prefix: etcdctl itself (or the sh loader that exports its environment, then execs it)
    assert saves[0][len(prefix)] in ("etcdctl", "sh") and "etcdctl" in saves[0], saves[0]
    assert f"--endpoints={etcd.url}" in saves[0]
    assert "SHA-256 trailer ok" in svc.verify(out / "etcd-apisix.snapshot")
    assert _restored_keys(svc, out / "etcd-apisix.snapshot", tmp_path / "new") == etcd.everything()


@etcd_needed
def test_etcd_through_a_configured_exec_prefix_backs_up_and_restores_through_the_cli(etcd, tmp_path, cli_env):
    from coderz_backup.config import load
    from coderz_backup.services import create

    bindir, calls = _fake_pod(tmp_path, "pod-exec", ["--pod", "etcd-0", "--"])
    prefix = [str(bindir / "pod-exec"), "--pod", "etcd-0", "--"]
    dest = tmp_path / "snapshots"
    conf = tmp_path / "c.toml"
    conf.write_text(f'dest = "{dest}"\nretries = 0\n\n[services.etcd-apisix]\nkind = "etcd"\n'
                    f'endpoint = "{etcd.url}"\nmethod = "etcdctl"\nexec_prefix = {json.dumps(prefix)}\n')
    res = run_cli(["backup", "--config", str(conf)], cli_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "✓ etcd-apisix.snapshot" in res.stdout
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert any("snapshot" in a and "save" in a for a in argvs), argvs
    assert all(a[:3] == ["--pod", "etcd-0", "--"] for a in argvs), argvs
    v = run_cli(["verify", "--config", str(conf), "--json"], cli_env)
    assert v.returncode == 0 and json.loads(v.stdout)["ok"] is True, v.stdout + v.stderr
    svc = create("etcd-apisix", load(str(conf)).services["etcd-apisix"])
    assert _restored_keys(svc, dest / "latest" / "etcd-apisix.snapshot", tmp_path / "new") == etcd.everything()


# -- memory stays flat ------------------------------------------------------------------------


_PEAK = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(r.stdout + r.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)
"""


def _peak_rss_of_backup(tmp_path: Path, env: dict, size: int) -> int:
    """Peak RSS (KiB) of the whole ``coderz-backup backup`` process tree for a configs tree
    holding one ``size``-byte file (sparse: read at disk speed without using the disk)."""
    root = tmp_path / f"cfg-{size}"
    root.mkdir()
    with open(root / "big.img", "wb") as fh:
        fh.truncate(size)
    (root / "docker-compose.yml").write_text("services: {}\n")
    dest = tmp_path / f"snaps-{size}"
    conf = tmp_path / f"c-{size}.toml"
    conf.write_text(f'dest = "{dest}"\nretries = 0\n\n[services.configs]\nkind = "configs"\npaths = ["{root}"]\n')
    p = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "coderz_backup", "backup",
                        "--config", str(conf)], env=env, capture_output=True, text=True, timeout=600)
    peak, rc = p.stdout.split()
    assert rc == "0", p.stderr
    m = json.loads((dest / "latest" / "manifest.json").read_text())
    assert m["status"] == "ok"
    # the archive really held the whole file (read back: the member's size)
    from coderz_backup.tarfile_compat import tarfile

    with tarfile.open(dest / "latest" / "configs.tar.gz") as tar:
        sizes = {Path(i.name).name: i.size for i in tar.getmembers() if i.isfile()}
    assert sizes["big.img"] == size
    return int(peak)


def test_memory_stays_flat_whatever_the_size(tmp_path, cli_env):
    small = _peak_rss_of_backup(tmp_path, cli_env, 16 * 2 ** 20)
    big = _peak_rss_of_backup(tmp_path, cli_env, 1 * 2 ** 30)
    # 64 times the data; the peak may differ by noise, never by anything near the 1008 MiB more read
    print(f"peak RSS: {small} KiB (16 MiB file), {big} KiB (1 GiB file)")
    assert big - small < 64 * 1024, f"peak RSS {small} KiB for 16 MiB, {big} KiB for 1 GiB"


# -- rotation's keep reasons in backup.log ---------------------------------------------------------


def test_rotation_writes_why_each_old_snapshot_is_kept_and_what_it_deleted(stack):
    res = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    first = os.readlink(stack.dest / "latest")
    # two old snapshots of the same ISO week and month, a Friday and the Saturday after it, five
    # weeks or more ago (copies of a real one: status ok, signed)
    import datetime as dt

    sat = dt.date.today() - dt.timedelta(days=35)
    while sat.weekday() != 5 or sat.day < 2:
        sat -= dt.timedelta(days=1)
    fri = sat - dt.timedelta(days=1)
    kept, gone = f"{sat:%Y-%m-%d}_03-00-00", f"{fri:%Y-%m-%d}_03-00-00"
    iso = sat.isocalendar()
    why = f"weekly {iso[0]}-W{iso[1]:02d}, monthly {sat:%Y-%m}"
    for old in (gone, kept):
        shutil.copytree(stack.dest / first, stack.dest / old)
    res = _backup(stack, "--keep", "7", "--keep-weekly", "8", "--keep-monthly", "12")
    assert res.returncode == 0, res.stdout + res.stderr
    now = os.readlink(stack.dest / "latest")
    log = (stack.dest / now / "backup.log").read_text()
    assert f"rotation: keeping {kept} although older than 7 days ({why})" in log, log
    assert f"rotation: deleted {gone} (older than 7 days)" in log, log
    names = sorted(p.name for p in stack.dest.iterdir() if SNAPSHOT_NAME.match(p.name))
    assert names == sorted([kept, first, now])
