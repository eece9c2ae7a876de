"""Off-site copies to a mounted folder (``kind = "dir"``), the way an operator uses them: through the
real backup flow and the CLI, with the stack's real PostgreSQL, Redis and configs."""

from __future__ import annotations

import json
import os
import shutil

from helpers import decoded_subject, mail_parts, run_cli, with_email

from coderz_backup.signing import SIGNATURE_FILE
from coderz_backup.snapshot import MANIFEST


def _with_target(stack, path) -> None:
    stack.config.write_text(stack.config.read_text() + f'\n[offsite.usb]\nkind = "dir"\npath = "{path}"\n')


def _backup(stack):
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    return res, stack.snapshots()[-1]


def test_every_finished_snapshot_lands_on_the_target_complete_and_is_listed(stack, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    _with_target(stack, drive)
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    copy = drive / snap.name
    # the very files that were signed: the manifest and its signature byte for byte, every artifact
    assert (copy / MANIFEST).read_bytes() == (snap / MANIFEST).read_bytes()
    assert (copy / SIGNATURE_FILE).read_bytes() == (snap / SIGNATURE_FILE).read_bytes()
    for entry in json.loads((snap / MANIFEST).read_text())["artifacts"]:
        for rec in entry["files"] or [entry]:
            assert (copy / rec["path"]).read_bytes() == (snap / rec["path"]).read_bytes()
    assert not list(drive.rglob(".*.partial"))
    # where the operator sees it: the report's Off-site section, the record beside the manifest, the list
    assert "Off-site" in res.stdout and f"✓ usb: " in res.stdout
    record = json.loads((snap / "post-snapshot.json").read_text())
    assert [(s["stage"], s["status"]) for s in record["stages"]] == [("offsite-usb", "ok")]
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == {"usb": [snap.name]}


def test_a_target_that_is_down_makes_the_run_a_warning_and_the_next_run_catches_up(stack, tmp_path):
    drive = tmp_path / "drive"          # not mounted (missing) during the first run
    _with_target(stack, drive)
    first, snap1 = _backup(stack)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "✗ usb: " in first.stdout and "is not a folder (is the drive mounted?)" in first.stdout
    assert (snap1 / MANIFEST).is_file() and (stack.dest / "latest").resolve() == snap1   # local snapshot fine
    drive.mkdir()
    second, snap2 = _backup(stack)
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(p.name for p in drive.iterdir()) == sorted([snap1.name, snap2.name])   # the missed one too
    assert f"caught up {snap1.name}" in second.stdout


def test_a_copy_cut_short_is_never_listed_and_push_completes_it(stack, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    res, snap = _backup(stack)                       # no target yet
    assert res.returncode == 0
    _with_target(stack, drive)
    # what a push killed before its last write leaves: everything but the signature
    shutil.copytree(snap, drive / snap.name)
    (drive / snap.name / SIGNATURE_FILE).unlink()
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert json.loads(listed.stdout) == {"usb": []}
    push = run_cli(["offsite", "push", snap.name, "--config", str(stack.config)], stack.env)
    assert push.returncode == 0, push.stdout + push.stderr
    assert (drive / snap.name / SIGNATURE_FILE).read_bytes() == (snap / SIGNATURE_FILE).read_bytes()
    again = run_cli(["offsite", "push", "--config", str(stack.config)], stack.env)
    assert again.returncode == 0 and "already on" in again.stdout


def test_fetch_on_a_new_host_brings_back_a_verified_snapshot_and_refuses_a_tampered_one(stack, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    _with_target(stack, drive)
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    new_host = tmp_path / "new-host"
    fetched = run_cli(["fetch", snap.name, "--from", "usb", "--dest", str(new_host), "--config", str(stack.config)],
                      stack.env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "every file matches its signed sha256" in fetched.stdout
    verify = run_cli(["verify", snap.name, "--dest", str(new_host), "--config", str(stack.config)], stack.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # the drive is hostile: one artifact changed after the copy (same size, other bytes)
    entry = next(e for e in json.loads((snap / MANIFEST).read_text())["artifacts"] if e["path"].endswith(".sql.gz"))
    victim = drive / snap.name / entry["path"]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    other = tmp_path / "other-host"
    refused = run_cli(["fetch", snap.name, "--from", "usb", "--dest", str(other), "--config", str(stack.config)],
                      stack.env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "sha256 differs from the manifest" in refused.stderr and "refused, nothing kept" in refused.stderr
    assert not [p for p in other.iterdir() if not p.name.startswith(".coderz-backup.lock")]

    # the disaster-recovery step on the same damaged copy: `restore --from` refuses it before any
    # service is touched (exit 2), keeps nothing and makes no safety backup
    a, _ = stack.dbs
    with a.connect() as c:
        c.execute("DELETE FROM flow_run WHERE id > 10")
    restored = run_cli(["restore", snap.name, "--from", "usb", "--yes", "--dest", str(other),
                        "--config", str(stack.config)], stack.env)
    assert restored.returncode == 2, restored.stdout + restored.stderr
    assert "sha256 differs from the manifest" in restored.stderr
    assert not [p for p in other.iterdir() if not p.name.startswith(".coderz-backup.lock")]
    with a.connect() as c:
        assert c.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 10   # not restored

    # a manifest changed on the drive no longer matches its signature: refused before any file is fetched
    manifest = drive / snap.name / MANIFEST
    manifest.write_text(manifest.read_text().replace('"status": "ok"', '"status": "ok" '))
    forged = run_cli(["fetch", snap.name, "--from", "usb", "--dest", str(other), "--config", str(stack.config)],
                     stack.env)
    assert forged.returncode == 1 and "signature does not match" in forged.stderr


def test_no_offsite_skips_the_targets_for_one_run(stack, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    _with_target(stack, drive)
    res = run_cli(["backup", "--no-offsite", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert list(drive.iterdir()) == [] and "Off-site" not in res.stdout
    assert not (stack.snapshots()[-1] / "post-snapshot.json").exists()


def test_verify_from_checks_the_offsite_copy_and_fails_on_a_damaged_one(stack, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    _with_target(stack, drive)
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    ok = run_cli(["verify", "--from", "usb", "--config", str(stack.config)], stack.env)   # latest on the target
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"Snapshot {snap.name}" in ok.stdout and "off-site usb" in ok.stdout and "0 failed" in ok.stdout
    entry = next(e for e in json.loads((snap / MANIFEST).read_text())["artifacts"] if e["path"].endswith(".rdb"))
    victim = drive / snap.name / entry["path"]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    bad = run_cli(["verify", snap.name, "--from", "usb", "--config", str(stack.config)], stack.env)
    assert bad.returncode == 1 and "sha256 differs from the manifest" in bad.stderr
    assert (snap / entry["path"]).read_bytes() != bytes(raw)    # the local snapshot is not touched


def test_an_encrypted_copy_is_checked_with_the_identity_from_the_config_or_the_command_line(stack, tmp_path):
    from pyrage import x25519

    ident = x25519.Identity.generate()
    drive = tmp_path / "drive"
    drive.mkdir()
    stack.config.write_text(stack.config.read_text() + f'\n[offsite.usb]\nkind = "dir"\npath = "{drive}"\n'
                            f'encrypt_to = ["{ident.to_public()}"]\n')
    res, snap = _backup(stack)
    assert res.returncode == 0, res.stdout + res.stderr
    env = dict(stack.env, T_AGE_IDENTITY=str(ident))
    refused = run_cli(["verify", "--from", "usb", "--config", str(stack.config)], env)
    assert refused.returncode == 2 and "is encrypted (age)" in refused.stderr, refused.stdout + refused.stderr
    ok = run_cli(["verify", "--from", "usb", "--identity", "env:T_AGE_IDENTITY", "--config", str(stack.config)], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"verified, 0 failed" in ok.stdout and f"off-site usb" in ok.stdout
    stack.config.write_text(stack.config.read_text() + 'identity = "env:T_AGE_IDENTITY"\n')
    fetched = run_cli(["fetch", snap.name, "--from", "usb", "--dest", str(tmp_path / "new"),
                       "--config", str(stack.config)], env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert (tmp_path / "new" / snap.name / MANIFEST).read_bytes() == (snap / MANIFEST).read_bytes()
    # config check does not ask the backup host for the identity it should not hold
    check = run_cli(["config", "check", "--config", str(stack.config)], stack.env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert str(ident) not in ok.stdout + ok.stderr + fetched.stdout + fetched.stderr


def test_a_full_drive_makes_the_run_a_warning_leaves_nothing_complete_and_no_partial_file(stack, tmp_path):
    import subprocess

    drive = tmp_path / "drive"
    drive.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(drive)], check=True)
    try:
        big = stack.root / "opt" / "coderz" / "configs" / "big.bin"
        big.write_bytes(os.urandom(256 * 1024))   # does not compress: the copy cannot fit in 64 KiB
        _with_target(stack, drive)
        res, snap = _backup(stack)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "✗ usb: " in res.stdout and "No space left on device" in res.stdout
        assert (snap / MANIFEST).is_file() and (stack.dest / "latest").resolve() == snap   # local snapshot fine
        leftovers = [p for p in drive.rglob("*") if p.is_file()]
        assert not [p for p in leftovers if p.name in (MANIFEST, SIGNATURE_FILE) or p.name.endswith(".partial")], \
            leftovers
        listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
        assert json.loads(listed.stdout) == {"usb": []}
    finally:
        subprocess.run(["umount", str(drive)], check=False)


def test_a_push_killed_mid_copy_leaves_nothing_listed_and_the_next_push_completes_it(stack, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    big = stack.root / "opt" / "coderz" / "configs" / "big.bin"
    big.write_bytes(os.urandom(300 << 20))
    res = run_cli(["backup", "--no-offsite", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    [snap] = stack.snapshots()
    drive = tmp_path / "drive"
    drive.mkdir()
    _with_target(stack, drive)
    push = subprocess.Popen([sys.executable, "-m", "coderz_backup", "offsite", "push", "--config", str(stack.config)],
                            env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    # kill it once the copy is under way: some file there, the big one still being written
    while time.monotonic() < deadline and not list(drive.rglob(".*.partial")):
        time.sleep(0.02)
    push.send_signal(signal.SIGKILL)
    push.wait(30)
    assert list(drive.rglob(".*.partial")), "the push finished before it could be killed"
    assert not (drive / snap.name / SIGNATURE_FILE).exists()
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert json.loads(listed.stdout) == {"usb": []}
    again = run_cli(["offsite", "push", "--config", str(stack.config)], stack.env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not list(drive.rglob(".*.partial"))
    fetched = run_cli(["fetch", snap.name, "--from", "usb", "--dest", str(tmp_path / "new"),
                       "--config", str(stack.config)], stack.env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr


def test_a_failed_copy_is_mailed_as_a_warning_naming_the_target_and_what_to_check(stack, tmp_path, smtp):
    _with_target(stack, tmp_path / "not-mounted")
    with_email(stack, smtp.port)
    res, snap = _backup(stack)
    assert res.returncode == 1, res.stdout + res.stderr
    [(_, msg)] = smtp.messages
    assert decoded_subject(msg).startswith("⚠️ Coderz Backup — 1 failure(s) on ")
    text = mail_parts(msg)["text/plain"]
    assert "usb" in text and "is not a folder (is the drive mounted?)" in text, text
    assert snap.name in text
