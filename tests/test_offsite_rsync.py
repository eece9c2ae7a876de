"""Off-site copies with rsync over SSH (``kind = "rsync"``) against a real, private OpenSSH sshd
(tests/sshd.py): through the real backup flow and the CLI as an operator uses them, and the
target's own calls where the remote side's answers matter (odd names, symlinks, a silent port).

The remote folder is a folder of this machine reached through sshd, so the tests can look at
(and damage) what arrived directly."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import time

import pytest
from helpers import run_cli
from sshd import keypair

from coderz_backup.errors import OffsiteError
from coderz_backup.offsite import complete_snapshots, create
from coderz_backup.offsite.rsync import RsyncTargetConfig
from coderz_backup.signing import SIGNATURE_FILE
from coderz_backup.snapshot import MANIFEST


def _with_rsync(stack, sshd, remote, *, key=None, known_hosts=None, extra="") -> None:
    stack.config.write_text(stack.config.read_text() + (
        f'\n[offsite.nas]\nkind = "rsync"\ntarget = "{sshd.target(remote)}"\nport = {sshd.port}\n'
        f'ssh_key = "{key or sshd.client_key}"\nknown_hosts = "{known_hosts or sshd.known_hosts}"\n{extra}'))


def _backup(stack):
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    return res, stack.snapshots()[-1]


def _files(snap) -> list[str]:
    out = []
    for entry in json.loads((snap / MANIFEST).read_text())["artifacts"]:
        out += [rec["path"] for rec in entry["files"] or [entry]]
    return out


def _remote_dir(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir(mode=0o700)
    return remote


def _target(sshd, remote, **over):
    cfg = dict(kind="rsync", target=sshd.target(remote), port=sshd.port, ssh_key=str(sshd.client_key),
               known_hosts=str(sshd.known_hosts))
    cfg.update(over)
    return create("nas", RsyncTargetConfig(**cfg))


def _only_lock(folder) -> bool:
    return not [p for p in folder.iterdir() if not p.name.startswith(".coderz-backup.lock")]


# -- through the backup flow and the CLI ----------------------------------------------------


def test_a_backup_lands_complete_on_the_remote_folder_is_listed_and_fetched_back(stack, sshd, tmp_path):
    remote = _remote_dir(tmp_path)
    _with_rsync(stack, sshd, remote)
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    copy = remote / snap.name
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == \
        sorted(_files(snap) + ["backup.log", MANIFEST, SIGNATURE_FILE])
    for rel in (MANIFEST, SIGNATURE_FILE, *_files(snap)):       # byte for byte, the very files signed
        assert (copy / rel).read_bytes() == (snap / rel).read_bytes(), rel
    for p in [copy, *copy.rglob("*")]:                         # private on the remote: 0700 / 0600
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    assert not [p for p in copy.rglob(".*") if p.is_file()]    # no rsync temp file left behind
    assert "✓ nas: " in res.stdout and f"{sshd.target(remote)} over SSH port {sshd.port}" in res.stdout
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert json.loads(listed.stdout) == {"nas": [snap.name]}
    again = run_cli(["offsite", "push", "--config", str(stack.config)], stack.env)
    assert again.returncode == 0 and "already on" in again.stdout, again.stdout + again.stderr
    new_host = tmp_path / "new-host"
    fetched = run_cli(["fetch", snap.name, "--from", "nas", "--dest", str(new_host), "--config", str(stack.config)],
                      stack.env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "every file matches its signed sha256" in fetched.stdout
    verify = run_cli(["verify", snap.name, "--dest", str(new_host), "--config", str(stack.config)], stack.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    check = run_cli(["config", "check", "--config", str(stack.config)], stack.env)
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_unknown_host_key_is_never_accepted_and_a_refused_key_says_so(stack, sshd, tmp_path):
    remote = _remote_dir(tmp_path)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    _with_rsync(stack, sshd, remote, known_hosts=empty)
    base_config = stack.config.read_text()
    res, snap = _backup(stack)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ nas: " in res.stdout and "host key verification failed" in res.stdout
    assert "ssh-keyscan" in res.stdout and "fingerprint" in res.stdout
    assert empty.read_text() == "" and list(remote.iterdir()) == []      # nothing learned, nothing sent
    assert (stack.dest / "latest").resolve() == snap and (snap / SIGNATURE_FILE).is_file()
    verify = run_cli(["verify", snap.name, "--config", str(stack.config)], stack.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # another key for that host (a reinstalled host, or someone in between): it says it changed
    keypair(tmp_path / "other_host_key")
    kind, blob = (tmp_path / "other_host_key.pub").read_text().split()[:2]
    empty.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    listed = run_cli(["offsite", "list", "--config", str(stack.config)], stack.env)
    assert listed.returncode == 2 and "host key verification failed" in listed.stderr
    assert "changed" in listed.stderr and list(remote.iterdir()) == []
    # the right host key, and a client key the remote account does not accept
    stranger = keypair(tmp_path / "stranger")
    stack.config.write_text(base_config.replace(f'ssh_key = "{sshd.client_key}"', f'ssh_key = "{stranger}"')
                            .replace(f'known_hosts = "{empty}"', f'known_hosts = "{sshd.known_hosts}"'))
    push = run_cli(["offsite", "push", "--config", str(stack.config)], stack.env)
    assert push.returncode == 1, push.stdout + push.stderr
    out = push.stdout + push.stderr
    assert f"refused the key {stranger}" in out and "authorized_keys" in out and list(remote.iterdir()) == []


def test_a_server_that_is_down_makes_the_run_a_warning_and_the_next_run_catches_up(stack, sshd, tmp_path):
    remote = _remote_dir(tmp_path)
    _with_rsync(stack, sshd, remote)
    sshd.stop()
    try:
        first, snap1 = _backup(stack)
    finally:
        sshd.start()
    assert first.returncode == 1, first.stdout + first.stderr
    assert "✗ nas: " in first.stdout and "connection refused" in first.stdout and "is sshd up" in first.stdout
    assert (stack.dest / "latest").resolve() == snap1 and (snap1 / SIGNATURE_FILE).is_file()
    second, snap2 = _backup(stack)
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(p.name for p in remote.iterdir()) == sorted([snap1.name, snap2.name])   # the missed one too
    assert f"caught up {snap1.name}" in second.stdout
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert json.loads(listed.stdout) == {"nas": [snap2.name, snap1.name]}


def test_a_copy_cut_short_is_not_listed_push_completes_it_and_fetch_refuses_a_damaged_one(stack, sshd, tmp_path):
    remote = _remote_dir(tmp_path)
    _with_rsync(stack, sshd, remote)
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    (remote / snap.name / SIGNATURE_FILE).unlink()     # what a push killed before its last write leaves
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == {"nas": []}, listed.stdout + listed.stderr
    push = run_cli(["offsite", "push", snap.name, "--config", str(stack.config)], stack.env)
    assert push.returncode == 0, push.stdout + push.stderr
    assert (remote / snap.name / SIGNATURE_FILE).read_bytes() == (snap / SIGNATURE_FILE).read_bytes()
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert json.loads(listed.stdout) == {"nas": [snap.name]}

    rel = next(p for p in _files(snap) if p.endswith(".sql.gz"))
    victim = remote / snap.name / rel
    original = victim.read_bytes()
    raw = bytearray(original)
    raw[len(raw) // 2] ^= 0x01                                   # same size, one bit flipped
    victim.write_bytes(bytes(raw))
    other = tmp_path / "other-host"
    refused = run_cli(["fetch", snap.name, "--from", "nas", "--dest", str(other), "--config", str(stack.config)],
                      stack.env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "sha256 differs from the manifest" in refused.stderr and "refused, nothing kept" in refused.stderr
    assert _only_lock(other)
    victim.write_bytes(original[:len(original) // 2])           # cut short
    truncated = run_cli(["fetch", snap.name, "--from", "nas", "--dest", str(other), "--config", str(stack.config)],
                        stack.env)
    assert truncated.returncode == 1, truncated.stdout + truncated.stderr
    assert f"{len(original) // 2} bytes fetched, the manifest says {len(original)}" in truncated.stderr
    assert _only_lock(other)


@contextlib.contextmanager
def _tmpfs(path, size="1m"):
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill a remote disk ({res.stderr.strip()[:120]})")
    try:
        yield path
    finally:
        for _ in range(40):            # the remote rsync may still hold it for a moment
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_remote_disk_is_a_clear_error_and_leaves_no_complete_copy(stack, sshd, tmp_path):
    (stack.root / "opt" / "coderz" / "configs" / "blob.bin").write_bytes(os.urandom(2 << 20))   # > the 1 MiB disk
    with _tmpfs(tmp_path / "small") as remote:
        _with_rsync(stack, sshd, remote)
        res, snap = _backup(stack)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "✗ nas: " in res.stdout and "the remote disk is full" in res.stdout
        assert not list(remote.rglob(SIGNATURE_FILE)) and not list(remote.rglob(MANIFEST))
        assert (snap / SIGNATURE_FILE).is_file()
        listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
        assert json.loads(listed.stdout) == {"nas": []}


# -- the target's own calls against the server ----------------------------------------------


def test_listing_odd_names_symlinks_and_removing_with_rsync_only(sshd, tmp_path):
    remote = _remote_dir(tmp_path)
    target = _target(sshd, remote)
    assert target.names() == [] and not target.exists("2026-12-01_03-00-00/f")
    snap = remote / "2026-12-01_03-00-00"
    snap.mkdir()
    odd = ["name with space", "new\nline", "tab\there", "ünïcødé", "back\\#123slash", "star*[x]?", "-dash", ".dot"]
    for n in odd:
        (snap / n).write_bytes(b".")
    (snap / "folder").mkdir()
    (snap / "link").symlink_to("/etc/passwd")
    (snap / "dirlink").symlink_to(snap / "folder")
    assert target.names("2026-12-01_03-00-00") == sorted(odd + ["folder"])
    assert target.exists("2026-12-01_03-00-00/name with space") and target.exists("2026-12-01_03-00-00/ünïcødé")
    with pytest.raises(OffsiteError, match="control character"):
        target.exists("2026-12-01_03-00-00/new\nline")
    assert not target.exists("2026-12-01_03-00-00/folder") and not target.exists("2026-12-01_03-00-00/link")
    assert target.names("2026-12-01_03-00-00/nothing") == [] and target.names("2026-12-01_03-00-00/-dash") == []
    with pytest.raises(OffsiteError, match="not there"), target.open("2026-12-01_03-00-00/link"):
        pass                                          # a symlink on the remote is never followed
    with pytest.raises(OffsiteError, match="not there"), target.open("2026-12-01_03-00-00/nope"):
        pass
    with target.open("2026-12-01_03-00-00/star*[x]?") as fh:
        assert fh.read() == b"."
    target._delete("2026-12-01_03-00-00/star*[x]?")     # wildcards in a name delete that name only
    assert sorted(p.name for p in snap.iterdir()) == sorted(set(odd + ["folder", "link", "dirlink"]) - {"star*[x]?"})
    keep = remote / "2026-12-02_03-00-00"
    keep.mkdir()
    (keep / "f").write_bytes(b"keep")
    target.remove("2026-12-01_03-00-00")
    target.remove("2026-12-09_03-00-00")              # missing is fine
    assert sorted(p.name for p in remote.iterdir()) == ["2026-12-02_03-00-00"] and (keep / "f").read_bytes() == b"keep"
    assert (tmp_path.parent / tmp_path.name).is_dir() and os.path.exists("/etc/passwd")
    with pytest.raises(Exception, match="outside the snapshot folder"):
        target.names("../x")


def test_a_file_that_does_not_arrive_as_sent_is_not_kept(sshd, tmp_path, monkeypatch):
    remote = _remote_dir(tmp_path)
    target = _target(sshd, remote)
    src = tmp_path / "f"
    src.write_bytes(os.urandom(5000))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(OffsiteError, match="the local file changed"):
        target.put("2026-12-01_03-00-00/f", src, size=5000, sha256=hashlib.sha256(b"other").hexdigest())
    assert list(remote.iterdir()) == []
    # the remote side changes it on the way (an rsync that writes elsewhere than asked, a bad disk):
    # the check afterwards finds the difference and deletes it
    real_run = target._run

    def damaging(argv, doing):
        res = real_run(argv, doing)
        if doing.startswith("sending"):
            victim = remote / "2026-12-01_03-00-00" / "f"
            victim.write_bytes(victim.read_bytes()[:-1] + b"!")
        return res

    monkeypatch.setattr(target, "_run", damaging)
    with pytest.raises(OffsiteError, match="differs from the file sent.*not kept"):
        target.put("2026-12-01_03-00-00/f", src, size=5000, sha256=digest)
    assert list((remote / "2026-12-01_03-00-00").iterdir()) == []
    monkeypatch.undo()
    target.put("2026-12-01_03-00-00/sub/f", src, size=5000, sha256=digest)
    assert (remote / "2026-12-01_03-00-00" / "sub" / "f").read_bytes() == src.read_bytes()
    with target.open("2026-12-01_03-00-00/sub/f") as fh:
        assert fh.read() == src.read_bytes()
    with pytest.raises(OffsiteError, match="does not exist on 127.0.0.1 — create it there"):
        _target(sshd, tmp_path / "no-such-folder").put("2026-12-01_03-00-00/f", src, size=5000, sha256=digest)
    assert not (tmp_path / "no-such-folder").exists()
    with pytest.raises(OffsiteError, match="does not exist on 127.0.0.1"):
        complete_snapshots(_target(sshd, tmp_path / "no-such-folder"))


def test_a_port_that_never_answers_times_out_and_missing_files_say_so(sshd, tmp_path):
    with socket.socket() as silent:       # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        target = _target(sshd, tmp_path, port=silent.getsockname()[1], timeout_s=2)
        started = time.monotonic()
        with pytest.raises(OffsiteError, match="did not answer in time"):
            target.names()
        assert time.monotonic() - started < 20
    with pytest.raises(OffsiteError, match=r"ssh_key .* does not exist — create a key pair"):
        _target(sshd, tmp_path, ssh_key=str(tmp_path / "nokey")).names()
    with pytest.raises(OffsiteError, match=r"known_hosts .* does not exist"):
        _target(sshd, tmp_path, known_hosts=str(tmp_path / "nokh")).names()
    loose = tmp_path / "loose_key"
    shutil.copy(sshd.client_key, loose)
    loose.chmod(0o644)
    with pytest.raises(OffsiteError, match="readable by others .* chmod 600"):
        _target(sshd, tmp_path, ssh_key=str(loose)).names()
