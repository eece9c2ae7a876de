"""backup_each: a service's artifacts are produced independently, and failures say which.

All written → the results; some failed → PartialBackupError carrying what was written and
why each other one failed; nothing written → the error itself (a config or secret problem
first, since retrying cannot fix it).
"""

from __future__ import annotations

import pickle

import pytest

from coderz_backup.errors import (ArtifactError, ConfigError, PartialBackupError, ProducerError, SecretError,
                                  VerifyError)
from coderz_backup.services.base import ArtifactResult, backup_each


def ok(path: str):
    return path, lambda: ArtifactResult("grafana", "grafana", path, bytes=10)


def skipped(path: str):
    return path, lambda: ArtifactResult("grafana", "grafana", path, status="skipped", error="not configured")


def failing(path: str, exc: Exception):
    def step():
        raise exc
    return path, step


def raised(steps) -> Exception:
    with pytest.raises(Exception) as info:
        backup_each("grafana", steps)
    return info.value


def test_all_written_returns_every_result_in_order():
    results = backup_each("grafana", [ok("a.json"), ok("b.tar.gz")])

    assert [r.path for r in results] == ["a.json", "b.tar.gz"]


def test_some_failed_is_a_partial_error_with_what_was_written_and_why_the_rest_failed():
    err = raised([ok("a.json"), failing("b.tar.gz", ProducerError("tar exited with status 2")), ok("c.json")])

    assert type(err) is PartialBackupError
    assert [r.path for r in err.results] == ["a.json", "c.json"]
    assert err.failed == {"b.tar.gz": "tar exited with status 2"}
    assert "b.tar.gz failed: tar exited with status 2" in str(err)
    assert "(written: a.json, c.json)" in str(err)


def test_a_step_after_a_failing_one_still_runs():
    ran = []
    steps = [failing("a", ProducerError("down")), ("b", lambda: ran.append("b") or ArtifactResult("s", "k", "b"))]

    with pytest.raises(PartialBackupError):
        backup_each("s", steps)

    assert ran == ["b"]


def test_a_single_artifact_that_failed_raises_its_own_error():
    cause = ProducerError("pg_dump exited with status 1")

    err = raised([failing("db.sql.gz", cause)])

    assert err is cause
    assert err.results == [] and err.failed == {"db.sql.gz": "pg_dump exited with status 1"}


@pytest.mark.parametrize("fatal", [SecretError("GRAFANA_TOKEN is not set"), ConfigError("services.g", ["bad url"])],
                         ids=["secret", "config"])
def test_when_nothing_was_written_a_config_or_secret_problem_is_the_error(fatal):
    err = raised([failing("a", ProducerError("timeout")), failing("b", fatal), failing("c", VerifyError("x"))])

    assert err is fatal
    assert set(err.failed) == {"a", "b", "c"}


def test_when_nothing_was_written_for_several_reasons_the_error_lists_each_artifact():
    err = raised([failing("a.json", ProducerError("HTTP 500")), failing("b.tar.gz", ArtifactError("no space"))])

    assert type(err) is ArtifactError
    assert str(err) == "a.json: HTTP 500; b.tar.gz: no space"


def test_skipped_artifacts_do_not_count_as_written():
    err = raised([skipped("data.tar.gz"), failing("api.json", ProducerError("HTTP 401"))])

    assert not isinstance(err, PartialBackupError)
    assert [(r.path, r.status) for r in err.results] == [("data.tar.gz", "skipped")]


def test_an_unexpected_exception_propagates_at_once():
    ran = []
    steps = [failing("a", KeyError("bug")), ("b", lambda: ran.append("b"))]

    with pytest.raises(KeyError):
        backup_each("s", steps)

    assert ran == []


def test_a_partial_error_survives_pickling_with_its_results():
    """Prefect carries a task's exception across processes: what was written must survive."""
    err = raised([ok("a.json"), failing("b.tar.gz", ProducerError("tar died"))])

    back = pickle.loads(pickle.dumps(err))

    assert type(back) is PartialBackupError and str(back) == str(err)
    assert [r.path for r in back.results] == ["a.json"]
    assert back.failed == {"b.tar.gz": "tar died"}


def test_each_failure_of_a_multi_artifact_service_is_logged(caplog):
    with pytest.raises(PartialBackupError):
        backup_each("grafana", [ok("a"), failing("b", ProducerError("HTTP 503"))])

    assert "grafana: b failed: HTTP 503" in caplog.text
