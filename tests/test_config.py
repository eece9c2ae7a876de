"""Configuration: defaults, precedence, validation messages and secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from coderz_backup import config as cfg
from coderz_backup.config import load, resolve_secret, secret_problems
from coderz_backup.errors import ConfigError, SecretError
from pydantic import SecretStr

#: the Coderz Stack of the product document, in its report order
STACK = [
    "postgres-prefect",
    "postgres-coderapi",
    "redis",
    "grafana",
    "prometheus",
    "elasticsearch",
    "configs",
    "etcd-k3s",
    "etcd-apisix",
    "apisix-config",
]

SECRET = "Zq9-unmistakable-Literal-Secret-4711"


@pytest.fixture
def no_default_file(tmp_path, monkeypatch):
    """Make sure the built-in config path does not exist (whatever the host has)."""
    monkeypatch.setattr(cfg, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "coderz-backup.toml")


def write(tmp_path: Path, text: str, name: str = "coderz-backup.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(*args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(*args, **kwargs)
    return info.value


# ---------------------------------------------------------------------------
# built-in defaults


def test_without_config_file_the_builtin_coderz_stack_is_used(no_default_file):
    config = load(env={})

    assert list(config.services) == STACK
    assert config.dest == Path("/opt/coderz/backup/snapshots")
    assert config.keep_days == 7
    kinds = {name: svc.kind for name, svc in config.services.items()}
    assert kinds["postgres-prefect"] == kinds["postgres-coderapi"] == "postgres"
    assert kinds["redis"] == "redis"
    assert kinds["configs"] == "configs"
    assert config.services["postgres-prefect"].database == "prefect"
    assert config.services["postgres-coderapi"].database == "coderapi"
    assert config.services["configs"].paths == ["/opt/coderz/configs"]
    assert "default" in config.source


def test_builtin_stack_is_all_enabled_in_product_document_report_order(no_default_file):
    assert list(load(env={}).enabled_services()) == STACK


def test_builtin_stack_takes_database_passwords_from_environment(no_default_file):
    services = load(env={}).services
    assert services["postgres-prefect"].password.get_secret_value() == "env:PG_PREFECT_PASSWORD"
    assert services["postgres-coderapi"].password.get_secret_value() == "env:PG_CODERAPI_PASSWORD"


def test_default_config_path_is_read_when_it_exists(tmp_path, monkeypatch):
    path = write(tmp_path, 'dest = "/srv/from-default-file"\nkeep_days = 3\n')
    monkeypatch.setattr(cfg, "DEFAULT_CONFIG_PATH", path)

    config = load(env={})

    assert config.dest == Path("/srv/from-default-file")
    assert config.keep_days == 3
    assert config.source == str(path)


def test_file_without_services_tables_keeps_the_default_stack(tmp_path):
    path = write(tmp_path, 'dest = "/srv/backups"\nkeep_days = 14\n')

    config = load(path, env={})

    assert list(config.services) == STACK
    assert config.dest == Path("/srv/backups")
    assert config.keep_days == 14


# ---------------------------------------------------------------------------
# precedence: flag > environment > file > default


def test_environment_dest_and_keep_days_override_the_file(tmp_path):
    path = write(tmp_path, 'dest = "/srv/file"\nkeep_days = 14\n')

    config = load(path, env={"CODERZ_BACKUP_DEST": "/srv/env", "KEEP_DAYS": "30"})

    assert config.dest == Path("/srv/env")
    assert config.keep_days == 30


def test_flags_override_environment_dest_and_keep_days(tmp_path):
    path = write(tmp_path, 'dest = "/srv/file"\nkeep_days = 14\n')

    config = load(path, dest="/srv/flag", keep=2,
                  env={"CODERZ_BACKUP_DEST": "/srv/env", "KEEP_DAYS": "30"})

    assert config.dest == Path("/srv/flag")
    assert config.keep_days == 2


def test_keep_flag_zero_means_keep_forever_even_when_keep_days_is_set(tmp_path):
    path = write(tmp_path, "keep_days = 14\n")

    config = load(path, keep=0, env={"KEEP_DAYS": "30"})

    assert config.keep_days == 0


def test_environment_keep_days_zero_overrides_the_file(tmp_path):
    path = write(tmp_path, "keep_days = 14\n")
    assert load(path, env={"KEEP_DAYS": "0"}).keep_days == 0


def test_config_file_is_taken_from_environment_when_no_flag_is_given(tmp_path, no_default_file):
    path = write(tmp_path, 'dest = "/srv/env-file"\n', name="from-env.toml")

    config = load(env={"CODERZ_BACKUP_CONFIG": str(path)})

    assert config.dest == Path("/srv/env-file")
    assert config.source == str(path)


def test_config_flag_overrides_config_file_from_environment(tmp_path):
    env_file = write(tmp_path, 'dest = "/srv/env-file"\n', name="from-env.toml")
    flag_file = write(tmp_path, 'dest = "/srv/flag-file"\n', name="from-flag.toml")

    config = load(flag_file, env={"CODERZ_BACKUP_CONFIG": str(env_file)})

    assert config.dest == Path("/srv/flag-file")
    assert config.source == str(flag_file)


# ---------------------------------------------------------------------------
# validation: every problem, with its location and the file name

MANY_MISTAKES = """\
    keep_days = -1
    colour = "blue"

    [services.pg]
    kind = "postgres"
    port = "not-a-port"
    database = "app"
    unknwn = 1

    [services.mystery]
    kind = "mongodb"
"""


def test_config_error_names_the_file_and_lists_every_problem_with_its_location(tmp_path):
    path = write(tmp_path, MANY_MISTAKES, name="many-mistakes.toml")

    err = load_error(path, env={})
    text = str(err)

    assert str(path) in text
    assert err.source == str(path)
    expected = {
        "services.pg.port": "integer",
        "services.pg.user": "required",
        "services.pg.unknwn": "unknown key",
        "services.mystery": "unknown kind",
        "keep_days": "greater than or equal to 0",
        "colour": "unknown key",
    }
    for location, what in expected.items():
        matching = [p for p in err.problems if p.startswith(f"{location}: ")]
        assert matching, f"no problem reported at {location}: {err.problems}"
        assert what in matching[0]
        assert matching[0] in text
    assert len(err.problems) == len(expected)


def test_unknown_kind_message_lists_the_known_kinds(tmp_path):
    path = write(tmp_path, '[services.x]\nkind = "mongodb"\n')

    err = load_error(path, env={})

    assert "postgres" in str(err) and "redis" in str(err)


def test_service_name_that_cannot_be_a_file_name_is_rejected(tmp_path):
    path = write(tmp_path, '[services.Bad_Name]\nkind = "redis"\n')

    err = load_error(path, env={})

    assert str(path) in str(err)
    assert any(p.startswith("services") and "Bad_Name" in p for p in err.problems)


def test_bad_service_name_is_reported_alongside_other_service_problems(tmp_path):
    path = write(tmp_path, """\
        [services.pg]
        kind = "postgres"
        port = "not-a-port"
        user = "u"
        database = "d"

        [services.Bad_Name]
        kind = "redis"
    """)

    err = load_error(path, env={})

    assert any(p.startswith("services.pg.port") for p in err.problems)
    assert any("Bad_Name" in p for p in err.problems), err.problems


def test_invalid_toml_raises_config_error_naming_the_file(tmp_path):
    path = write(tmp_path, 'dest = "/srv/x"\nkeep_days = = 3\n', name="broken.toml")

    err = load_error(path, env={})

    assert str(path) in str(err)
    assert "TOML" in str(err)
    assert "line 2" in str(err)


@pytest.mark.parametrize("via", ["flag", "environment"])
def test_explicitly_named_missing_config_file_is_an_error(tmp_path, via, no_default_file):
    missing = tmp_path / "nope.toml"
    if via == "flag":
        err = load_error(missing, env={})
    else:
        err = load_error(env={"CODERZ_BACKUP_CONFIG": str(missing)})

    assert str(missing) in str(err)
    assert "not found" in str(err)


def test_config_path_that_is_a_directory_is_an_error(tmp_path):
    err = load_error(tmp_path, env={})
    assert str(tmp_path) in str(err)


def test_negative_keep_flag_is_rejected(tmp_path, no_default_file):
    err = load_error(keep=-1, env={})
    assert any(p.startswith("keep_days") for p in err.problems)


def test_non_numeric_keep_days_environment_is_a_config_error(no_default_file):
    err = load_error(env={"KEEP_DAYS": "abc"})

    assert "KEEP_DAYS" in str(err)
    assert "abc" in str(err)


def test_bad_keep_days_environment_is_reported_together_with_file_problems(tmp_path):
    path = write(tmp_path, '[services.pg]\nkind = "postgres"\nuser = "u"\ndatabase = "d"\nport = "x"\n')

    err = load_error(path, env={"KEEP_DAYS": "abc"})

    assert any("KEEP_DAYS" in p for p in err.problems)
    assert any(p.startswith("services.pg.port") for p in err.problems)


# ---------------------------------------------------------------------------
# services


TWO_SERVICES = """\
    [services.app-db]
    kind = "postgres"
    user = "app"
    password = "env:APP_DB_PASSWORD"
    database = "app"

    [services.cache]
    kind = "redis"
    enabled = false

    [services.etc]
    kind = "configs"
    paths = ["/etc/app"]
"""


def test_services_tables_replace_the_default_stack(tmp_path):
    config = load(write(tmp_path, TWO_SERVICES), env={})

    assert list(config.services) == ["app-db", "cache", "etc"]
    assert config.services["app-db"].database == "app"
    assert config.services["etc"].paths == ["/etc/app"]


def test_disabled_service_is_not_in_enabled_services(tmp_path):
    config = load(write(tmp_path, TWO_SERVICES), env={})

    assert list(config.enabled_services()) == ["app-db", "etc"]


def test_only_selects_just_the_named_services(tmp_path):
    config = load(write(tmp_path, TWO_SERVICES), env={})

    assert list(config.enabled_services(only=["etc"])) == ["etc"]


def test_only_with_unknown_service_name_is_a_config_error(tmp_path):
    config = load(write(tmp_path, TWO_SERVICES), env={})

    with pytest.raises(ConfigError) as info:
        config.enabled_services(only=["etc", "mongo"])

    assert len(info.value.problems) == 1
    assert "'mongo'" in info.value.problems[0]


def test_relative_configs_path_is_rejected(tmp_path):
    path = write(tmp_path, '[services.etc]\nkind = "configs"\npaths = ["etc/app"]\n')

    err = load_error(path, env={})

    assert any(p.startswith("services.etc.paths") and "absolute" in p for p in err.problems)


# ---------------------------------------------------------------------------
# secrets


def test_env_secret_reference_resolves_from_the_environment(monkeypatch):
    monkeypatch.setenv("CODERZ_TEST_PG_PASSWORD", "from-the-env")

    assert resolve_secret(SecretStr("env:CODERZ_TEST_PG_PASSWORD")) == "from-the-env"


def test_literal_secret_resolves_to_itself():
    assert resolve_secret(SecretStr("plain-literal")) == "plain-literal"
    assert resolve_secret(None) is None


def test_unset_env_secret_raises_secret_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("CODERZ_TEST_UNSET_PASSWORD", raising=False)

    with pytest.raises(SecretError) as info:
        resolve_secret(SecretStr("env:CODERZ_TEST_UNSET_PASSWORD"), what="services.pg.password")

    assert "CODERZ_TEST_UNSET_PASSWORD" in str(info.value)
    assert "services.pg.password" in str(info.value)


def test_literal_password_never_appears_in_repr_or_str_of_the_config(tmp_path):
    path = write(tmp_path, f"""\
        [email]
        password = "{SECRET}"
        to = ["ops@example.org"]

        [services.pg]
        kind = "postgres"
        user = "u"
        password = "{SECRET}"
        database = "d"
    """)

    config = load(path, env={})

    assert config.services["pg"].password.get_secret_value() == SECRET  # really loaded
    for text in (repr(config), str(config), repr(config.services["pg"]), str(config.email),
                 config.model_dump_json()):
        assert SECRET not in text


PG_OK = 'kind = "postgres"\nuser = "u"\ndatabase = "d"\n'


@pytest.mark.parametrize("toml", [
    # the failing value is the secret itself, or a table/list that contains it
    pytest.param(f'[services.pg]\n{PG_OK}pasword = "{SECRET}"\n', id="misspelled-password-key"),
    pytest.param(f'[services.pg]\n{PG_OK}password = ["{SECRET}"]\n', id="secret-of-wrong-type"),
    pytest.param(f'[services.pg]\nkind = "postgres"\ndatabase = "d"\npassword = "{SECRET}"\n',
                 id="missing-key-in-same-service"),
    pytest.param(f'[services.pg]\nkind = "postgress"\nuser = "u"\npassword = "{SECRET}"\n',
                 id="unknown-kind-in-same-service"),
    pytest.param(f'[email]\npasswd = "{SECRET}"\n', id="misspelled-email-password-key"),
    # the secret sits next to an unrelated mistake
    pytest.param(f'[services.pg]\n{PG_OK}password = "{SECRET}"\nport = "not-a-port"\n',
                 id="validation-error-in-same-service"),
    pytest.param(f'[services.pg]\n{PG_OK}password = "{SECRET}"\n[services.other]\nkind = "nope"\n',
                 id="validation-error-elsewhere"),
    pytest.param(f'[services.pg]\n{PG_OK}password = "{SECRET}" trailing\n',
                 id="toml-syntax-error-on-secret-line"),
])
def test_literal_password_never_appears_in_config_error(tmp_path, toml):
    path = write(tmp_path, toml)

    err = load_error(path, env={})

    assert err.problems
    assert SECRET not in str(err)
    assert all(SECRET not in p for p in err.problems)


def test_secret_problems_lists_unset_env_references_of_enabled_services(tmp_path, monkeypatch):
    monkeypatch.delenv("CODERZ_TEST_UNSET_A", raising=False)
    monkeypatch.delenv("CODERZ_TEST_UNSET_DISABLED", raising=False)
    monkeypatch.delenv("CODERZ_TEST_UNSET_SMTP", raising=False)
    monkeypatch.setenv("CODERZ_TEST_SET_B", "present")
    path = write(tmp_path, """\
        [email]
        password = "env:CODERZ_TEST_UNSET_SMTP"

        [services.a]
        kind = "postgres"
        user = "u"
        database = "d"
        password = "env:CODERZ_TEST_UNSET_A"

        [services.b]
        kind = "postgres"
        user = "u"
        database = "d"
        password = "env:CODERZ_TEST_SET_B"

        [services.off]
        kind = "redis"
        enabled = false
        password = "env:CODERZ_TEST_UNSET_DISABLED"

        [services.literal]
        kind = "redis"
        password = "not-a-reference"
    """)

    problems = secret_problems(load(path, env={}))

    assert len(problems) == 2
    assert any(p.startswith("services.a.password") and "CODERZ_TEST_UNSET_A" in p for p in problems)
    assert any(p.startswith("email.password") and "CODERZ_TEST_UNSET_SMTP" in p for p in problems)


def test_secret_problems_is_empty_when_every_reference_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("CODERZ_TEST_SET_A", "x")
    path = write(tmp_path, '[services.a]\nkind = "redis"\npassword = "env:CODERZ_TEST_SET_A"\n')

    assert secret_problems(load(path, env={})) == []


def test_prefect_secret_reference_resolves_from_a_saved_secret_block():
    """`prefect-secret:NAME` loads a Secret block from the Prefect API (the session's real server)."""
    import secrets as _secrets

    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    from coderz_backup.config import resolve_secret
    from coderz_backup.errors import SecretError

    name = f"coderz-test-{_secrets.token_hex(4)}"
    Secret(value="block-secret-value-77").save(name)
    assert resolve_secret(SecretStr(f"prefect-secret:{name}")) == "block-secret-value-77"
    with pytest.raises(SecretError, match="no-such-block") as err:
        resolve_secret(SecretStr("prefect-secret:no-such-block"))
    assert "block-secret-value-77" not in str(err.value)
