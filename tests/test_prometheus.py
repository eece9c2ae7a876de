"""Prometheus TSDB snapshot on a real Prometheus 2.42 (Debian package) scraping itself.

Also through Docker: the same module streams the snapshot folder out of a
``coderz-prometheus`` container (get_archive) and restores by stopping/starting it.
"""

from __future__ import annotations

import json
from coderz_backup.tarfile_compat import tarfile
import time

import httpx
import pytest
from isal import igzip

from coderz_backup.services.prometheus import PrometheusConfig
from coderz_backup.errors import ArtifactError, RestoreError, StoreError, VerifyError
from coderz_backup.sandbox import PrometheusServer, free_port
from coderz_backup.services import create
from coderz_backup.services.prometheus import blocks_fingerprint, read_blocks


@pytest.fixture
def prom(tmp_path):
    srv = PrometheusServer(tmp_path / "prom").start()
    _wait_samples(srv.url)
    yield srv
    srv.stop()


def _wait_samples(url: str, n: int = 3) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/api/v1/query", params={"query": "count_over_time(up[1m])"}).json()
        res = r["data"]["result"]
        if res and float(res[0]["value"][1]) >= n:
            return
        time.sleep(0.5)
    raise AssertionError("prometheus scraped nothing")


def _samples(url: str, start: float, end: float) -> list:
    r = httpx.get(f"{url}/api/v1/query_range",
                  params={"query": "up", "start": start, "end": end, "step": "1s"}).json()
    return r["data"]["result"][0]["values"] if r["data"]["result"] else []


def _cfg(srv: PrometheusServer, **over) -> PrometheusConfig:
    data = dict(kind="prometheus", url=srv.url, data_dir=str(srv.data))
    data.update(over)
    return PrometheusConfig(**data)


def test_snapshot_is_streamed_into_the_tarball_and_removed_from_the_data_dir(prom, tmp_path):
    svc = create("prometheus", _cfg(prom))
    [res] = svc.backup(tmp_path / "snap")
    assert res.status == "ok" and res.path == "prometheus-snapshot.tar.gz"
    art = tmp_path / "snap" / res.path
    blocks = read_blocks(art)   # read back from disk: the blocks the backup took from the stream
    assert res.details["blocks"] == len(blocks) >= 1
    assert res.fingerprint == blocks_fingerprint(blocks)
    with igzip.open(art) as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        names = [m.name for m in tar]
    ulid = next(iter(blocks))
    assert f"{ulid}/meta.json" in names and f"{ulid}/index" in names
    assert not any(n.startswith(("wal", "snapshots", "/")) for n in names)
    assert list((prom.data / "snapshots").iterdir()) == []   # never piles up
    utc = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))  # noqa: E731
    lo, hi = min(b["minTime"] for b in blocks.values()), max(b["maxTime"] for b in blocks.values())
    assert lo < hi <= time.time() * 1000
    assert svc.verify(art) == (f"gzip and tar intact, {len(blocks)} TSDB block(s) with meta.json, "
                               f"{utc(lo)} … {utc(hi)}")


def test_snapshot_folder_is_removed_even_when_writing_fails(prom, tmp_path):
    not_a_dir = tmp_path / "dest-is-a-file"
    not_a_dir.write_text("x")
    with pytest.raises(StoreError, match="cannot create the folder .*dest-is-a-file"):
        create("prometheus", _cfg(prom)).backup(not_a_dir)
    assert not_a_dir.read_text() == "x"                       # nothing written over the way
    assert list((prom.data / "snapshots").iterdir()) == []   # the snapshot taken for it is gone again


def test_admin_api_off_says_which_flag_to_add(tmp_path):
    srv = PrometheusServer(tmp_path / "p2", admin_api=False).start()
    snap = tmp_path / "snap"
    snap.mkdir()
    try:
        with pytest.raises(ArtifactError, match="--web.enable-admin-api"):
            create("prometheus", _cfg(srv)).backup(snap)
    finally:
        srv.stop()
    assert list(snap.iterdir()) == []   # no tarball, not even a half-written one
    assert not (srv.data / "snapshots").exists() or list((srv.data / "snapshots").iterdir()) == []


def test_unreachable_and_missing_data_dir_fail_clearly(prom, tmp_path):
    with pytest.raises(ArtifactError, match="unreachable"):
        create("prometheus", PrometheusConfig(kind="prometheus", url=f"http://127.0.0.1:{free_port()}",
                                              data_dir=str(prom.data))).backup(tmp_path)
    with pytest.raises(ArtifactError, match="set data_dir"):
        create("prometheus", _cfg(prom, data_dir=None)).backup(tmp_path)
    with pytest.raises(ArtifactError, match="is data_dir the TSDB path"):
        create("prometheus", _cfg(prom, data_dir=str(tmp_path / "elsewhere"))).backup(tmp_path)
    assert not list(tmp_path.glob("*.tar.gz"))


def test_verify_catches_flipped_and_truncated_archives(prom, tmp_path):
    svc = create("prometheus", _cfg(prom))
    [res] = svc.backup(tmp_path)
    art = tmp_path / res.path
    data = art.read_bytes()
    art.write_bytes(data[: len(data) // 2])
    with pytest.raises(VerifyError, match=r"^prometheus-snapshot\.tar\.gz: archive is damaged \(Compressed file "
                                          r"ended before the end-of-stream marker was reached\)"):
        svc.verify(art)
    # a flipped byte anywhere — in a deflate block (isal: "invalid lookback distance"), in the
    # header or in the trailer (CRC) — is a VerifyError, never another exception
    for at in sorted({10, 100, *range(len(data) // 16, len(data), len(data) // 16), len(data) - 5}):
        flipped = bytearray(data)
        flipped[at] ^= 0x55
        art.write_bytes(bytes(flipped))
        # the stream is checked as it is read: a flip that renames a block's meta.json in a tar
        # header is caught there, before the gzip CRC at the end
        with pytest.raises(VerifyError, match=r"^prometheus-snapshot\.tar\.gz: (archive is damaged \(|block\(s\) "
                                              r"without meta\.json: )"):
            svc.verify(art)


def test_round_trip_restores_the_old_series(prom, tmp_path):
    cfg = _cfg(prom, stop_command=prom.stop_command, start_command=prom.start_command)
    svc = create("prometheus", cfg)
    t0 = time.time()
    before = _samples(prom.url, t0 - 120, t0)
    assert len(before) >= 3
    [res] = svc.backup(tmp_path / "snap")
    # wipe: stop, delete the TSDB, start empty — the old samples are gone
    prom.stop()
    for p in prom.data.iterdir():
        import shutil

        shutil.rmtree(p) if p.is_dir() else p.unlink()
    prom.start()
    assert _samples(prom.url, t0 - 120, t0) == []
    detail = svc.restore(tmp_path / "snap" / res.path)
    assert "block(s) restored" in detail and ".coderz-old-" in detail
    after = _samples(prom.url, t0 - 120, t0)
    assert [v for _, v in after] and {ts for ts, _ in before} <= {ts for ts, _ in after}
    assert svc.health() == "ready"


def test_restore_refuses_while_running_without_a_stop_command(prom, tmp_path):
    svc = create("prometheus", _cfg(prom))
    [res] = svc.backup(tmp_path)
    entries = sorted(p.name for p in prom.data.iterdir())
    with pytest.raises(RestoreError, match="stop_command"):
        svc.restore(tmp_path / res.path)
    assert sorted(p.name for p in prom.data.iterdir()) == entries


def test_in_a_container_snapshot_comes_out_through_the_engine_and_restore_restarts_it(docker_services, tmp_path):
    pc = docker_services.prometheus()
    _wait_samples(pc.url)
    cfg = PrometheusConfig(kind="prometheus", url=pc.url, container=pc.name, data_dir="/prometheus")
    svc = create("prometheus", cfg)
    t0 = time.time()
    before = _samples(pc.url, t0 - 120, t0)
    [res] = svc.backup(tmp_path)
    assert res.status == "ok" and read_blocks(tmp_path / res.path)
    from coderz_backup.access import DockerAccess

    assert DockerAccess(pc.name).run(["ls", "/prometheus/snapshots"], label="ls").strip() == ""
    # a data_dir that is not on a volume/bind mount lives in the container's own layer, which the
    # helper containers cannot see: refused before anything stops
    unmounted = create("prometheus", cfg.model_copy(update={"data_dir": "/opt/tsdb"}))
    with pytest.raises(RestoreError, match="/opt/tsdb is not on a volume or bind mount.*nothing changed"):
        unmounted.restore(tmp_path / res.path)
    assert pc.running
    detail = svc.restore(tmp_path / res.path)
    assert pc.running and detail.endswith("ready")
    after = _samples(pc.url, t0 - 120, t0)
    assert {ts for ts, _ in before} <= {ts for ts, _ in after}


def test_a_prometheus_without_any_data_gives_an_ok_empty_snapshot(tmp_path):
    srv = PrometheusServer(tmp_path / "empty", self_scrape=False).start()
    try:
        svc = create("prometheus", _cfg(srv))
        [res] = svc.backup(tmp_path / "snap")
    finally:
        srv.stop()
    assert res.status == "ok" and res.details["blocks"] == 0 and "no samples" in res.details["note"]
    assert svc.verify(tmp_path / "snap" / res.path) == ("gzip and tar intact, no TSDB block (Prometheus held no "
                                                        "samples when it was taken)")


@pytest.mark.parametrize("member", [("sym", "01HZZZZZZZZZZZZZZZZZZZZZZZ/chunks", "/etc"),
                                    ("sym", "01HZZZZZZZZZZZZZZZZZZZZZZZ/up", "../../.."),
                                    ("hard", "01HZZZZZZZZZZZZZZZZZZZZZZZ/index", "../outside")])
def test_verify_refuses_what_the_restore_would_refuse(tmp_path, member):
    """verify == restore: a snapshot tarball with a link out of the data dir fails verify, not
    half-way through a restore."""
    import gzip

    from helpers import tar_bytes

    from coderz_backup.services.prometheus import read_blocks

    meta = json.dumps({"ulid": "01HZZZZZZZZZZZZZZZZZZZZZZZ", "minTime": 0, "maxTime": 1})
    evil = tmp_path / "prometheus-snapshot.tar.gz"
    evil.write_bytes(gzip.compress(tar_bytes([("dir", "01HZZZZZZZZZZZZZZZZZZZZZZZ", ""),
                                              ("file", "01HZZZZZZZZZZZZZZZZZZZZZZZ/meta.json", meta), member])))
    with pytest.raises(VerifyError, match="unsafe member"):
        read_blocks(evil)
