"""PostgreSQL → ``<name>.sql.gz``: plain ``pg_dump`` streamed through gzip.

The password goes to pg_dump/psql in ``PGPASSWORD`` (the process environment), never
in argv. A dump is complete only when its head has ``-- PostgreSQL database dump`` and
its *tail* has ``-- PostgreSQL database dump complete`` (current releases put a
``\\unrestrict`` line after the trailer, so the last line is not the marker).

Restore is all-or-nothing: the dump is loaded with ``ON_ERROR_STOP`` in one
transaction into a fresh database ``<db>__coderz_restore``; only when that succeeded
is the old database swapped out (renamed, then dropped). A failing restore leaves the
current database untouched.

A dump is code psql runs as the restoring user, and its meta-commands (``\\! cmd``, ``\\o
|cmd``, ``\\copy … program``) run on this host. So psql never gets a dump as it is: the
stream starts with a ``\\restrict`` of a fresh random key of our own (psql then refuses every
meta-command but ``\\unrestrict <that key>``, wherever in a line it stands), and pg_dump's own
``\\restrict``/``\\unrestrict`` lines are taken out (:func:`psql_stream`). ``verify`` refuses
a dump with any other meta-command at the start of a line outside COPY data, so verify and
restore agree on such a dump; psql needs the ``\\restrict`` command (15.14+, 16.10+, 17.6+,
13.22+, 14.19+, 18+), an older one is refused before anything changes.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import time
from pathlib import Path
from typing import ClassVar, Iterator, Literal

import psycopg
from psycopg import sql

from pydantic import Field, SecretStr

from ..access import ARCHIVE_ERRORS, CHUNK
from ..fingerprint import PgDumpCounter
from ..schema import ServiceBase, resolve_secret
from ..errors import ArtifactError, IncompleteArtifactError, RestoreError, VerifyError
from ..reader import ArtifactPath, as_artifact
from ..writer import StreamEnds, write_command
from .base import ArtifactResult, BaseService

__all__ = ["PostgresService", "check_dump"]

log = logging.getLogger(__name__)

HEAD_MARKER = b"-- PostgreSQL database dump"
TAIL_MARKER = b"-- PostgreSQL database dump complete"


def check_dump(ends: StreamEnds) -> None:
    """Raise IncompleteArtifactError unless the dump has its header and trailer."""
    if HEAD_MARKER not in ends.head[:4096]:
        raise IncompleteArtifactError("output is not a pg_dump plain-format dump (header missing)")
    if TAIL_MARKER not in ends.tail[-4096:]:
        raise IncompleteArtifactError(
            "dump is truncated: the trailer '-- PostgreSQL database dump complete' is missing"
        )


def read_gzip_chunks(path: ArtifactPath | Path) -> Iterator[bytes]:
    """Decompressed chunks of a .gz artifact (through the reader); VerifyError when it is corrupt or truncated."""
    artifact = as_artifact(path)
    try:
        yield from artifact.chunks(CHUNK)
    except VerifyError:
        raise
    except ARCHIVE_ERRORS as exc:  # truncated / bad CRC / not gzip / damaged deflate data
        raise VerifyError(f"{artifact.name}: gzip stream is damaged ({exc})") from None


# pg_dump's own lines that psql reads as commands: \restrict / \unrestrict around the dump,
# COPY … FROM stdin; … \. around table data (a data line is never a command). Matched after
# the newline that ends the line before.
_COMMAND_LINE = re.compile(rb"\n(\\[^\n]*|COPY [^\n]* FROM stdin;)(?=\n|$)")
_RESTRICT = re.compile(rb"^\\(?:un)?restrict [A-Za-z0-9]+$")
_COPY_END = b"\n\\.\n"
# first releases whose psql has \restrict (CVE-2025-8714 fix)
_RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}


def psql_stream(chunks, key: str | None = None):
    """The dump as psql may get it: with ``key``, our own ``\\restrict key`` comes first; pg_dump's
    own ``\\restrict``/``\\unrestrict`` lines are dropped; any other meta-command at the start
    of a line outside COPY data raises VerifyError (the stream stops there). Without ``key`` it
    only checks (verify). Untouched otherwise, streamed in whole lines; table data (the bulk)
    is skipped with one search for its end, so this runs at memory speed."""
    if key is not None:
        yield f"\\restrict {key}\n".encode()
    in_copy = False
    lines_before = 0
    for chunk in _whole_lines(chunks):
        text = b"\n" + chunk            # every line of the chunk now follows a newline
        out, keep, pos = [], 1, 0
        while True:
            if in_copy:
                end = text.find(_COPY_END, pos)
                if end < 0:
                    in_copy = not text.endswith(b"\n\\.")
                    break
                in_copy, pos = False, end + 3
                continue
            m = _COMMAND_LINE.search(text, pos)
            if m is None:
                break
            line = m.group(1)
            pos = m.end()
            if line.startswith(b"COPY "):
                in_copy = True
            elif _RESTRICT.match(line):
                out.append(text[keep:m.start() + 1])
                keep = m.end() + 1             # the line and its newline
            else:
                line_no = lines_before + text.count(b"\n", 1, m.start() + 1) + 1
                raise VerifyError(f"the dump holds a psql meta-command outside COPY data at line {line_no} "
                                  f"({line[:40].decode('utf-8', 'replace')!r}): pg_dump writes none; refused, "
                                  "nothing was run")
        out.append(text[keep:])
        lines_before += chunk.count(b"\n")
        yield b"".join(out)


def _whole_lines(chunks):
    """Re-cut ``chunks`` so that every piece ends at a newline (the last one may not)."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield data[:cut]
    if carry:
        yield carry


def psql_can_restrict(version_output: str) -> bool:
    """Whether ``psql --version`` names a release with ``\\restrict``."""
    m = re.search(r"\b(\d+)\.(\d+)", version_output)
    if not m:
        return False
    major, minor = int(m.group(1)), int(m.group(2))
    return major >= 18 or minor >= _RESTRICT_SINCE.get(major, 10 ** 6)



class PostgresConfig(ServiceBase):
    """A PostgreSQL database dumped with pg_dump (plain SQL, gzip)."""

    kind: Literal["postgres"]
    host: str = Field("127.0.0.1", description="server host")
    port: int = Field(5432, ge=1, le=65535, description="server port")
    user: str = Field(..., description="role used for pg_dump and restore")
    password: SecretStr | None = Field(None, description="password reference (env:NAME recommended)")
    database: str = Field(..., description="database to dump")
    pg_dump: str = Field("pg_dump", description="pg_dump executable")
    psql: str = Field("psql", description="psql executable (restore)")
    default_min_bytes: ClassVar[int] = 64
    order: ClassVar[int] = 10

    def report_title(self, name: str) -> str:
        return self.title or f"PostgreSQL — {self.database}"


class PostgresService(BaseService):
    kind: ClassVar[str] = "postgres"
    config_model: ClassVar[type[PostgresConfig]] = PostgresConfig
    config: PostgresConfig

    # -- helpers ------------------------------------------------------------
    @property
    def artifact_path(self) -> str:
        return f"{self.name}.sql.gz"

    def artifacts(self) -> list[str]:
        return [self.artifact_path]

    def _env(self) -> dict[str, str]:
        env = {"PGCONNECT_TIMEOUT": "15", "PGAPPNAME": "coderz-backup"}
        password = resolve_secret(self.config.password, what=f"{self.name}.password")
        if password is not None:
            env["PGPASSWORD"] = password
        return env

    def _conn_args(self) -> list[str]:
        c = self.config
        return ["--host", c.host, "--port", str(c.port), "--username", c.user, "--no-password"]

    def _connect(self, dbname: str) -> psycopg.Connection:
        c = self.config
        try:
            return psycopg.connect(
                host=c.host, port=c.port, user=c.user, dbname=dbname,
                password=resolve_secret(c.password, what=f"{self.name}.password"),
                connect_timeout=15, autocommit=True, application_name="coderz-backup",
            )
        except psycopg.Error as exc:
            raise RestoreError(f"{self.name}: cannot connect to {c.host}:{c.port} as {c.user}: "
                               f"{str(exc).strip()}") from None

    # -- backup -------------------------------------------------------------
    def backup(self, into: Path) -> list[ArtifactResult]:
        """pg_dump (plain SQL) streamed through the writer into ``<name>.sql.gz``; header and trailer checked."""
        c = self.config
        argv = [c.pg_dump, *self._conn_args(), "--dbname", c.database, "--format=plain"]
        started = time.monotonic()
        counter = PgDumpCounter()   # rows per table as the dump streams by (read-only)
        counter.what = f"{self.name}: fingerprint"
        rec = write_command(
            self.access, argv, into, self.artifact_path, check=check_dump,
            env=self._env(), timeout=c.timeout_s, label=f"pg_dump of {c.database}@{c.host}:{c.port}",
            observe=counter.observe,
        )
        log.info("%s: dumped %s (%d bytes raw, %d compressed) in %.1fs", self.name, c.database,
                 rec.raw_bytes, rec.bytes, time.monotonic() - started)
        return [ArtifactResult.from_files(self.name, self.kind, self.artifact_path, [rec],
                                          details={"database": c.database, "raw_bytes": rec.raw_bytes},
                                          fingerprint=counter.result())]

    # -- fingerprint (restore drills) ----------------------------------------
    def fingerprint_live(self) -> dict:
        """``server_version`` (``SHOW server_version``, its first word) and exact ``count(*)`` of
        every table of the configured database pg_dump dumps data of: ordinary tables and
        partitions outside the system schemas, not temporary, not an extension's own."""
        with self._connect(self.config.database) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]
            rows = conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND c.relpersistence <> 't' "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' "
                "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
                "AND d.objid = c.oid AND d.deptype = 'e') ORDER BY 1, 2").fetchall()
            tables = {}
            for schema, table in rows:
                q = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
                tables[f"{schema}.{table}"] = int(conn.execute(q).fetchone()[0])
        return {"server_version": version, "tables": dict(sorted(tables.items()))}

    # -- verify -------------------------------------------------------------
    def verify(self, artifact: ArtifactPath | Path | Path) -> str:
        """gzip intact, pg_dump's header and trailer present, no psql meta-command outside pg_dump's own."""
        artifact = as_artifact(artifact)
        head = bytearray()
        tail = b""
        raw = 0

        def _tap(chunks):   # one decompression for both checks: the ends, and the meta-commands
            nonlocal head, tail, raw
            for chunk in chunks:
                if len(head) < 4096:
                    head += chunk[: 4096 - len(head)]
                tail = (tail + chunk)[-65536:]
                raw += len(chunk)
                yield chunk

        try:
            for _ in psql_stream(_tap(read_gzip_chunks(artifact))):
                pass
        except VerifyError as exc:
            raise VerifyError(str(exc) if str(exc).startswith(artifact.name) else f"{artifact.name}: {exc}") from None
        if raw == 0:
            raise VerifyError(f"{artifact.name}: empty dump")
        try:
            check_dump(StreamEnds(bytes(head), tail, raw))
        except IncompleteArtifactError as exc:
            raise VerifyError(f"{artifact.name}: {exc}") from None
        return f"gzip intact, pg_dump header and trailer present, no psql meta-commands ({raw} bytes of SQL)"

    # -- restore ------------------------------------------------------------
    def restore_target(self) -> str:
        c = self.config
        return f"database {c.database} on {c.host}:{c.port} is replaced (loaded into a copy first, then swapped)"

    def health(self) -> str:
        with self._connect(self.config.database) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
                                  "('pg_catalog', 'information_schema')").fetchone()[0]
        return f"accepts queries, {tables} table(s)"

    def restore(self, artifact: ArtifactPath | Path | Path, *, database: str | None = None, **_: object) -> str:
        """Load ``artifact`` into ``database`` (default: the configured one), all or nothing."""
        artifact = as_artifact(artifact)
        self.verify(artifact)
        c = self.config
        version = self.access.run([c.psql, "--version"], timeout=30, label="psql --version")
        if not psql_can_restrict(version):
            raise RestoreError(f"{self.name}: {version.strip() or c.psql} cannot restrict meta-commands "
                               "(\\restrict: psql 13.22+, 14.19+, 15.14+, 16.10+, 17.6+); a dump is not run "
                               "as this user without it. Nothing was changed; update the PostgreSQL client")
        target = database or c.database
        staging = f"{target}__coderz_restore"
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
        retired = f"{target}__coderz_old_{stamp}"
        with self._connect("postgres") as conn:
            row = conn.execute(
                "SELECT pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba) "
                "FROM pg_database WHERE datname = %s", (target,)).fetchone()
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(staging)))
            create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(staging))
            if row:
                create = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                    sql.Identifier(staging), sql.Literal(row[0]), sql.Literal(row[1]), sql.Literal(row[2]))
            try:
                conn.execute(create)
            except psycopg.Error as exc:
                raise RestoreError(f"{self.name}: cannot create staging database {staging}: {str(exc).strip()}") from None

        argv = [c.psql, *self._conn_args(), "--dbname", staging, "-X", "-q",
                "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"]
        try:
            self.access.feed(argv, psql_stream(read_gzip_chunks(artifact), secrets.token_hex(24)),
                             env=self._env(), timeout=c.timeout_s,
                             label=f"psql restore into {staging}")
        except (ArtifactError, VerifyError) as exc:
            with self._connect("postgres") as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(staging)))
            raise RestoreError(f"{self.name}: restore failed, {target} left unchanged: {exc}") from None

        with self._connect("postgres") as conn:
            self._swap(conn, target, staging, retired, existed=row is not None)
            if row and row[3] != c.user:
                try:
                    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(target), sql.Identifier(row[3])))
                except psycopg.Error as exc:
                    log.warning("%s: could not give %s back to owner %s: %s", self.name, target, row[3], exc)
        log.info("%s: restored %s from %s", self.name, target, artifact.name)
        return f"database {target} replaced from {artifact.name}"

    def _swap(self, conn: psycopg.Connection, target: str, staging: str, retired: str, *, existed: bool) -> None:
        ident = sql.Identifier
        for attempt in range(5):
            try:
                if existed:
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()", (target,))
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(target), ident(retired)))
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(staging), ident(target)))
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.5 * (attempt + 1))
            except psycopg.Error as exc:
                raise RestoreError(f"{self.name}: could not swap in the restored database: {str(exc).strip()}") from None
        else:
            raise RestoreError(f"{self.name}: {target} stayed in use; the restored copy is kept as {staging}")
        if existed:
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(retired)))
            except psycopg.Error as exc:
                log.warning("%s: old copy kept as %s (%s)", self.name, retired, exc)
