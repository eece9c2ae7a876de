"""The command line in-process (main(argv)): help texts, bad flags, and the commands that need
no server — config check, list, key show, and everything refused before Prefect starts."""

from __future__ import annotations

import json
import os

import pytest

from coderz_backup import __version__
from coderz_backup.cli import main

COMMANDS = [["backup"], ["list"], ["verify"], ["restore"], ["key", "show"], ["config", "check"], ["setup"]]


def exit_of(argv) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_top_level_help_lists_every_command(capsys):
    assert exit_of(["--help"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("usage: coderz-backup")
    for cmd in ("backup", "list", "verify", "restore", "key", "config", "setup"):
        assert f"    {cmd}" in out
    assert "$CODERZ_BACKUP_CONFIG" in out


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_a_help_text_with_its_description(cmd, capsys):
    assert exit_of([*cmd, "--help"]) == 0

    out = capsys.readouterr().out
    assert out.startswith(f"usage: coderz-backup {' '.join(cmd)}")
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 8, out   # a sentence, not just the usage line
    assert "--config" in out


def test_version_is_the_packages(capsys):
    assert exit_of(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"coderz-backup {__version__}"


@pytest.mark.parametrize("argv, says", [
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["backup", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["backup", "--keep", "-1"], "argument --keep: must be 0 (keep forever) or more"),
    (["backup", "--keep", "week"], "argument --keep: 'week' is not a whole number of days"),
    (["restore", "--timeout", "0"], "argument --timeout: 0 must be at least 1 second"),
    (["restore", "--timeout", "soon"], "argument --timeout: 'soon' is not a whole number of seconds"),
    (["config"], "the following arguments are required: SUBCOMMAND"),
    (["setup", "--type", "kubernetes"], "argument --type: invalid choice: 'kubernetes'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, says, capsys):
    assert exit_of(argv) == 2

    err = capsys.readouterr().err
    assert says in err
    assert "usage: coderz-backup" in err


def config_file(tmp_path, text="", top=""):
    """A config with two services (cache, etc) and its dest in tmp_path; ``text`` appends tables."""
    path = tmp_path / "c.toml"
    path.write_text(f'{top}dest = "{tmp_path / "snapshots"}"\n'
                    '[services.cache]\nkind = "redis"\n[services.etc]\nkind = "configs"\npaths = ["/etc/app"]\n'
                    + text)
    return str(path)


def test_only_names_split_on_commas_and_repeat_and_unknown_ones_are_exit_2_before_anything_runs(tmp_path, capsys):
    code = main(["backup", "--config", config_file(tmp_path), "--only", "cache,nope", "--only", " also-nope "])

    err = capsys.readouterr().err
    assert code == 2
    assert "unknown service 'nope'" in err and "unknown service 'also-nope'" in err
    assert "'cache'" not in err.split("configured:")[0]
    assert not (tmp_path / "snapshots").exists()


def test_backup_with_an_unset_secret_is_exit_2_before_prefect_starts(tmp_path, capsys):
    cfg = config_file(tmp_path, '[services.cache2]\nkind = "redis"\npassword = "env:T_UNSET_REDIS_PW"\n')

    code = main(["backup", "--config", cfg])

    assert code == 2
    assert "services.cache2.password: environment variable T_UNSET_REDIS_PW is not set" in capsys.readouterr().err


def test_config_check_of_a_valid_file_says_what_it_will_do(tmp_path, capsys):
    cfg = config_file(tmp_path)

    assert main(["config", "check", "--config", cfg]) == 0

    out = capsys.readouterr().out
    assert out.startswith(f"✓ {cfg}: valid — dest {tmp_path / 'snapshots'}, keep 7 days, 2 service(s): cache, etc")


def test_config_check_of_a_broken_file_is_exit_2_naming_it_and_each_problem(tmp_path, capsys):
    cfg = config_file(tmp_path, '[services.x]\nkind = "mongodb"\n', top='colour = "blue"\n')

    assert main(["config", "check", "--config", cfg]) == 2

    err = capsys.readouterr().err
    assert f"✗ {cfg}: " in err
    assert "  - colour: unknown key" in err
    assert "services.x: unknown kind" in err


def make_snapshot(dest, name, status, total):
    path = dest / name
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"status": status, "total_bytes": total, "passed": 2,
                                                    "failed": int(status != "ok"), "skipped": 0}))


def test_list_shows_snapshots_newest_first_and_marks_latest(tmp_path, capsys):
    dest = tmp_path / "snapshots"
    make_snapshot(dest, "2026-03-05_03-00-00", "ok", 2048)
    make_snapshot(dest, "2026-03-06_03-00-00", "partial", 5 * 1024 ** 2)
    os.symlink("2026-03-05_03-00-00", dest / "latest")

    assert main(["list", "--config", config_file(tmp_path)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SNAPSHOT", "STATUS", "SIZE", "PASSED", "FAILED", "SKIPPED", "DRILLED"]
    assert lines[1].split() == ["2026-03-06_03-00-00", "partial", "5.0M", "2", "1", "0", "—"]
    assert lines[2].split() == ["2026-03-05_03-00-00", "ok", "2.0K", "2", "0", "0", "—", "←", "latest"]


def test_list_json_is_machine_readable(tmp_path, capsys):
    make_snapshot(tmp_path / "snapshots", "2026-03-05_03-00-00", "ok", 2048)

    assert main(["list", "--json", "--config", config_file(tmp_path)]) == 0

    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["status"], r["total_bytes"], r["latest"]) for r in rows] == [
        ("2026-03-05_03-00-00", "ok", 2048, False)]


def test_list_of_a_missing_destination_is_exit_2(tmp_path, capsys):
    assert main(["list", "--config", config_file(tmp_path), "--dest", str(tmp_path / "nowhere")]) == 2
    assert f"destination {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["verify"], ["restore", "--yes"]])
def test_verify_and_restore_refuse_a_name_that_is_not_a_snapshot_name(cmd, tmp_path, capsys):
    (tmp_path / "snapshots").mkdir()

    assert main([*cmd, "../etc", "--config", config_file(tmp_path)]) == 2
    assert "'../etc' is not a snapshot name" in capsys.readouterr().err


def test_key_show_creates_the_key_once_and_prints_the_same_public_key(tmp_path, capsys, monkeypatch):
    key = tmp_path / "keys" / "host.key"
    monkeypatch.setenv("CODERZ_BACKUP_SIGNING_KEY", str(key))

    assert main(["key", "show", "--config", config_file(tmp_path)]) == 0
    first = capsys.readouterr()
    assert main(["key", "show", "--config", config_file(tmp_path)]) == 0
    second = capsys.readouterr()

    assert first.out == second.out and first.out.startswith("ed25519:")
    assert "created now" in first.err and "created now" not in second.err
    assert str(key) in second.err and key.exists()
