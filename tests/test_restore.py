"""Flow coderz-restore: verify, plan, typed approval (pause/resume), safety backup, restore."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from helpers import run_cli

from coderz_backup.snapshot import SNAPSHOT_NAME


@pytest.fixture
def backed_up(stack, redis_server):
    """The stack with a restorable redis, one finished snapshot, then changed data."""
    stack.config.write_text(stack.config.read_text().replace(
        f'data_dir = "{redis_server.data}"\n',
        f'data_dir = "{redis_server.data}"\nstart_command = {json.dumps(redis_server.start_command)}\n'))
    stack.redis = redis_server
    r = redis_server.client()
    r.set("session:1", "alice", ex=3600)
    r.hset("stats", mapping={"runs": "7"})
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    stack.snapshot = os.readlink(stack.dest / "latest")
    stack.original = _state(stack)
    # the "disaster": rows deleted, keys changed, a config file edited
    with stack.dbs[0].connect() as c:
        c.execute("DELETE FROM flow_run WHERE id > 10")
    r.delete("stats")
    r.set("junk", "1")
    (stack.root / "opt/coderz/configs/docker-compose.yml").write_text("broken: [\n")
    stack.changed = _state(stack)
    assert stack.changed != stack.original
    return stack


def _state(stack) -> dict:
    out = {}
    for i, db in enumerate(stack.dbs):
        with db.connect() as c:
            table = "flow_run" if i == 0 else "users"
            out[f"pg{i}"] = c.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    r = stack.redis.client() if hasattr(stack, "redis") else None
    if r is not None:
        out["redis"] = {k: r.dump(k) for k in sorted(r.keys())}
    out["compose"] = (stack.root / "opt/coderz/configs/docker-compose.yml").read_bytes()
    return out


def test_restore_with_yes_brings_every_service_back_and_keeps_a_safety_backup(backed_up):
    s = backed_up
    res = run_cli(["restore", s.snapshot, "--config", str(s.config), "--yes"], s.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _state(s) == s.original
    assert 3500 < s.redis.client().ttl("session:1") <= 3600
    safety = [p for p in (s.dest / "safety-backups").iterdir() if SNAPSHOT_NAME.match(p.name)]
    assert len(safety) == 1
    m = json.loads((safety[0] / "manifest.json").read_text())
    assert m["status"] == "ok" and m["passed"] == 4
    assert "undo with" in res.stdout.lower() and safety[0].name in res.stdout
    log = (s.dest / s.snapshot / "restore.log").read_text()
    assert "approved" in log and "health" in log
    # the restore did not make the safety backup the `latest` of the main destination
    assert os.readlink(s.dest / "latest") == s.snapshot


def test_without_a_terminal_and_without_yes_nothing_changes(backed_up):
    s = backed_up
    res = run_cli(["restore", "--config", str(s.config)], s.env)
    assert res.returncode == 3
    assert "--yes" in res.stderr
    assert _state(s) == s.changed
    assert not (s.dest / "safety-backups").exists()


@pytest.mark.parametrize("yes", [True, False])
def test_bad_input_is_exit_2_with_or_without_a_terminal(backed_up, yes):
    """A cron job must see "bad input" (2), not "not approved" (3), for a mistyped --only."""
    s = backed_up
    res = run_cli(["restore", "--only", "no-such-service", "--config", str(s.config)] + (["--yes"] if yes else []),
                  s.env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no-such-service" in res.stderr
    assert _state(s) == s.changed


@pytest.mark.parametrize("name", ["../x", "/etc", "latest/../..", "2026-03-06", "..", "latest/", "２０２６-03-06_03-00-00"])
def test_snapshot_name_attacks_are_refused(backed_up, name):
    s = backed_up
    res = run_cli(["restore", name, "--config", str(s.config), "--yes"], s.env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "snapshot" in res.stderr
    assert _state(s) == s.changed


def test_corrupted_artifact_is_refused_before_anything_changes(backed_up):
    s = backed_up
    rdb = s.dest / s.snapshot / "redis.rdb"
    data = bytearray(rdb.read_bytes())
    data[len(data) // 2] ^= 0x40
    rdb.write_bytes(bytes(data))
    res = run_cli(["restore", "--config", str(s.config), "--yes"], s.env)
    assert res.returncode == 2
    assert "verification failed" in res.stderr and "redis.rdb" in res.stderr
    assert _state(s) == s.changed
    v = run_cli(["verify", "--config", str(s.config)], s.env)
    assert v.returncode == 1 and "✗ redis.rdb" in v.stdout


def test_a_service_failing_mid_restore_does_not_stop_the_others(backed_up):
    s = backed_up
    s.config.write_text(s.config.read_text().replace(json.dumps(s.redis.start_command), '["false"]'))
    res = run_cli(["restore", "--config", str(s.config), "--yes"], s.env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "| redis | failed |" in res.stdout
    assert "coderz-backup restore" in res.stdout and "safety-backups" in res.stdout
    s.redis.start()  # the failed start left Redis down; the operator would start it
    now = _state(s)
    assert now["pg0"] == s.original["pg0"] and now["compose"] == s.original["compose"]


# -- approval through the Prefect API (the same path the UI form uses) -------------------------


def _run_paused_restore(s, answer: dict | None, timeout_s: int = 120):
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    from coderz_backup.flows.backup import add_listener, remove_listener
    from coderz_backup.flows.restore import coderz_restore

    os.environ.update({k: v for k, v in s.env.items() if k.startswith("T_")})
    seen: dict = {}
    listener = lambda event, data: seen.setdefault(event, data)  # noqa: E731
    add_listener(listener)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("state", coderz_restore(
        config=str(s.config), approval_timeout_s=timeout_s, return_state=True)))
    t.start()
    try:
        deadline = time.monotonic() + 120
        while "restore-plan" not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
        run_id = seen["restore-plan"]["flow_run_id"]
        assert "Restore plan" in seen["restore-plan"]["plan"]
        if answer is not None:
            with get_client(sync_client=True) as c:
                while not c.read_flow_run(run_id).state.is_paused():
                    time.sleep(0.2)
            assert _state(s) == s.changed  # paused: nothing touched yet
            resume_flow_run(run_id, run_input=answer)
        t.join(timeout=300)
    finally:
        remove_listener(listener)
    return box["state"], seen.get("restore-refused", {}).get("reason")


def test_api_approval_with_the_typed_name_restores(backed_up):
    s = backed_up
    state, _ = _run_paused_restore(s, {"approve": True, "snapshot": s.snapshot})
    assert state.is_completed(), state
    assert _state(s) == s.original


@pytest.mark.parametrize("answer", [{"approve": False, "snapshot": "x"}, {"approve": True, "snapshot": "2020-01-01_00-00-00"}])
def test_rejected_or_mistyped_approval_changes_nothing(backed_up, answer):
    s = backed_up
    state, refused = _run_paused_restore(s, answer)
    assert state.is_cancelled() and "nothing was changed" in state.message and "nothing was changed" in refused
    assert _state(s) == s.changed
    assert not (s.dest / "safety-backups").exists()


def test_approval_timeout_changes_nothing(backed_up):
    s = backed_up
    state, refused = _run_paused_restore(s, None, timeout_s=3)
    assert not state.is_completed()  # the API fails a run whose pause timed out
    assert "timed out" in refused
    assert _state(s) == s.changed


def _on_a_terminal(args: list[str], env: dict, typed: str | None, limit_s: float = 240) -> tuple[int, str]:
    """Run scripts/restore.sh on a pseudo-terminal, type ``typed`` at the prompt (None: never answer).

    Killed after ``limit_s`` (exit code -9) so a CLI that waits forever fails the test instead of hanging it.
    """
    import pty
    import select
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "restore.sh"
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execvpe("bash", ["bash", str(script), *args], env)
    out = b""
    answered = False
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not answered and typed is not None and b"Type the snapshot name" in out:
            os.write(fd, typed.encode() + b"\n")
            answered = True
    done, status = os.waitpid(pid, os.WNOHANG)
    if done == 0:   # still waiting after limit_s
        os.killpg(pid, 9) if os.getpgid(pid) == pid else os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_operator_on_a_terminal_sees_the_plan_and_types_the_name(backed_up):
    s = backed_up
    rc, out = _on_a_terminal([s.snapshot, "--config", str(s.config)], s.env, s.snapshot)
    assert rc == 0, out
    assert "Restore plan" in out and "is replaced" in out
    assert _state(s) == s.original


def test_operator_typing_something_else_changes_nothing(backed_up):
    s = backed_up
    rc, out = _on_a_terminal(["--config", str(s.config)], s.env, "yes")
    assert rc == 3, out
    assert "does not match" in out or "rejected" in out
    assert _state(s) == s.changed


def test_operator_who_never_answers_gets_the_timeout_not_a_prompt_forever(backed_up):
    s = backed_up
    rc, out = _on_a_terminal(["--config", str(s.config), "--timeout", "3"], s.env, None, limit_s=150)
    assert rc == 3, out   # -9 would mean the prompt outlived the run's own approval timeout
    assert "Type the snapshot name" in out and "timed out" in out
    assert _state(s) == s.changed


def test_restore_sh_list(backed_up):
    s = backed_up
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "restore.sh"
    res = subprocess.run(["bash", str(script), "--list", "--config", str(s.config)], env=s.env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and s.snapshot in res.stdout and "latest" in res.stdout


def test_restore_outcome_is_mailed_when_mail_is_configured(backed_up, smtp):
    from helpers import decoded_subject, mail_parts, with_email

    s = backed_up
    with_email(s, smtp.port)
    res = run_cli(["restore", s.snapshot, "--config", str(s.config), "--yes", "--no-safety-backup"], s.env)
    assert res.returncode == 0, res.stdout + res.stderr
    [(_, msg)] = smtp.messages
    subject = decoded_subject(msg)
    assert subject.startswith(f"✅ Coderz Restore — OK from {s.snapshot} on ")
    assert "postgres-prefect" in mail_parts(msg)["text/plain"]
