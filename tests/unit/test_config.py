"""Config loading beyond tests/test_config.py: Docker defaults, the signing key, report order,
every problem at once (with unset secrets), and resolved secrets masked in the log."""

from __future__ import annotations

import logging
import secrets
import textwrap

import pytest
from pydantic import SecretStr

from coderz_backup.config import load, resolve_secret, secret_problems
from coderz_backup.errors import ConfigError
from coderz_backup.runlog import run_log


def write(tmp_path, text: str):
    path = tmp_path / "coderz-backup.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(*args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(*args, **kwargs)
    return info.value


def test_docker_true_puts_the_builtin_services_into_the_stacks_containers(tmp_path):
    services = load(write(tmp_path, "docker = true\n"), env={}).services

    assert services["postgres-prefect"].container == "coderz-postgres"
    assert services["redis"].container == "coderz-redis" and services["redis"].data_dir == "/data"
    assert services["etcd-apisix"].exec_prefix[:2] == ["kubectl", "exec"]
    assert services["configs"].container is None


def test_docker_true_leaves_services_you_wrote_yourself_alone(tmp_path):
    services = load(write(tmp_path, 'docker = true\n[services.redis]\nkind = "redis"\n'), env={}).services

    assert list(services) == ["redis"] and services["redis"].container is None


def test_the_signing_key_comes_from_the_environment_over_the_file(tmp_path):
    path = write(tmp_path, 'signing_key = "/etc/file.key"\n')

    assert load(path, env={}).signing_key == "/etc/file.key"
    assert load(path, env={"CODERZ_BACKUP_SIGNING_KEY": "/run/env.key"}).signing_key == "/run/env.key"


def test_a_source_key_in_the_file_cannot_pretend_to_be_another_file(tmp_path):
    path = write(tmp_path, 'source = "/etc/trusted.toml"\n')

    assert load(path, env={}).source == str(path)


def test_enabled_services_follow_the_report_order_then_the_files_order(tmp_path):
    config = load(write(tmp_path, """\
        [services.etc]
        kind = "configs"
        paths = ["/etc/app"]
        [services.cache]
        kind = "redis"
        [services.db-b]
        kind = "postgres"
        user = "u"
        database = "b"
        [services.db-a]
        kind = "postgres"
        user = "u"
        database = "a"
    """), env={})

    assert list(config.enabled_services()) == ["db-b", "db-a", "cache", "etc"]


def test_every_problem_is_reported_at_once_with_the_file_name_unset_secrets_included(tmp_path):
    path = write(tmp_path, """\
        [email]
        smtp_port = 0
        password = "env:T_UNSET_SMTP"
        [services.db]
        kind = "postgres"
        database = "d"
        password = "env:T_UNSET_DB"
        [services.nokind]
        port = 1
        [services.mongo]
        kind = "mongodb"
    """)

    err = load_error(path, env={})

    assert str(err).startswith(f"{path}: {len(err.problems)} problem(s):")
    wanted = ["email.smtp_port: ", "services.db.user: ", "services.nokind: missing key 'kind'",
              "services.mongo: unknown kind", "services.db.password: environment variable T_UNSET_DB is not set",
              "email.password: environment variable T_UNSET_SMTP is not set"]
    for start in wanted:
        assert any(p.startswith(start) for p in err.problems), (start, err.problems)
    assert len(err.problems) == len(wanted)


def test_unset_secrets_of_a_disabled_service_are_not_problems_until_it_is_asked_for(tmp_path):
    config = load(write(tmp_path, """\
        [services.cache]
        kind = "redis"
        enabled = false
        password = "env:T_UNSET_CACHE"
    """), env={})

    assert secret_problems(config) == []
    assert secret_problems(config, ["cache"]) == [
        "services.cache.password: environment variable T_UNSET_CACHE is not set"]


def test_a_resolved_secret_never_reaches_the_run_log(tmp_path, monkeypatch):
    value = f"pw-{secrets.token_hex(8)}"
    monkeypatch.setenv("T_DB_PASSWORD", value)

    with run_log(tmp_path / "backup.log"):
        resolved = resolve_secret(SecretStr("env:T_DB_PASSWORD"), what="services.db.password")
        logging.getLogger("coderz_backup.x").info("psql said: password %s rejected", resolved)

    assert resolved == value
    assert "password *** rejected" in (tmp_path / "backup.log").read_text()
