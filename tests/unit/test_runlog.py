"""The run log: backup.log in UTC, private, secrets masked, our own errors without tracebacks."""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import sys

from coderz_backup.errors import StoreError
from coderz_backup.runlog import ExpectedErrorFilter, redact, run_log

log = logging.getLogger("coderz_backup.test")


def secret() -> str:
    return f"s3cr3t-{secrets.token_hex(8)}"


def test_run_log_writes_our_info_lines_with_utc_timestamps_into_a_private_file(tmp_path):
    path = tmp_path / "backup.log"

    with run_log(path):
        log.info("dumping %s", "postgres-prefect")
        log.debug("not at info level")

    text = path.read_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO    coderz_backup.test: dumping postgres-prefect\n",
                        text), text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_run_log_appends_and_stops_at_the_end_of_the_block(tmp_path):
    path = tmp_path / "backup.log"
    path.write_text("earlier run\n")

    with run_log(path):
        log.warning("inside")
    log.warning("after the block")

    assert path.read_text().splitlines()[0] == "earlier run"
    assert "inside" in path.read_text() and "after the block" not in path.read_text()


def test_run_log_restores_the_level_of_our_logger(tmp_path):
    ours = logging.getLogger("coderz_backup")
    before = ours.level
    ours.setLevel(logging.ERROR)
    try:
        with run_log(tmp_path / "backup.log"):
            assert ours.level == logging.INFO
        assert ours.level == logging.ERROR
    finally:
        ours.setLevel(before)


def test_a_registered_secret_is_masked_in_messages_arguments_and_tracebacks(tmp_path):
    value = secret()
    redact(value)
    path = tmp_path / "backup.log"

    with run_log(path):
        log.info(f"connecting with {value}")
        log.info("password=%s", value)
        try:
            raise RuntimeError(f"auth failed for {value}")
        except RuntimeError:
            log.exception("crash")

    text = path.read_text()
    assert value not in text
    assert "connecting with ***" in text and "password=***" in text
    assert "RuntimeError: auth failed for ***" in text


def test_the_longest_secret_is_masked_first(tmp_path):
    short = secret()
    redact(short)
    redact(short + "-and-longer")
    path = tmp_path / "backup.log"

    with run_log(path):
        log.info("token %s-and-longer", short)

    assert "token ***\n" in path.read_text()


def test_values_too_short_to_be_secrets_do_not_mangle_the_log(tmp_path):
    redact("ok")
    path = tmp_path / "backup.log"

    with run_log(path):
        log.info("backup ok")

    assert "backup ok" in path.read_text()


def test_extra_handlers_get_the_masking_too(tmp_path):
    value = secret()
    redact(value)
    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    with run_log(tmp_path / "backup.log", extra_handlers=[Collect()]):
        log.info("key %s", value)

    assert seen == ["key ***"]


def record_with(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        return logging.LogRecord("x", logging.ERROR, __file__, 1, "task failed", None, sys.exc_info())


def test_our_own_errors_are_logged_without_a_traceback():
    rec = record_with(StoreError("destination full"))

    assert ExpectedErrorFilter().filter(rec) is True
    assert rec.exc_info is None


def test_any_other_exception_keeps_its_traceback():
    rec = record_with(KeyError("a bug"))

    ExpectedErrorFilter().filter(rec)

    assert rec.exc_info is not None and rec.exc_info[0] is KeyError
