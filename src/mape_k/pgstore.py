"""The knowledge store on PostgreSQL: what `Store` does on one SQLite file, shared by the
replicas of a highly available daemon, plus the leader lease they contend for.

Choices:

- Synchronous psycopg 3. The daemon calls the store from one dedicated worker thread (as
  it does the SQLite store), so a blocking `Connection` guarded by a thread lock is the
  simplest thing that is right; nothing here runs on the event loop.
- The same schema as SQLite (`PG_MIGRATIONS`, one entry per `store.MIGRATIONS` entry),
  JSON kept as TEXT so that records round-trip byte for byte, and a `seq` identity
  column where SQLite breaks ties by `rowid`. Migrations run under
  `pg_advisory_xact_lock`, each in its own transaction, re-reading the version under the
  lock: replicas starting at once migrate exactly once.
- The same queries as SQLite: every journal and knowledge method is `store.JournalStore`'s,
  written once in the SQL both speak with `?` placeholders and `rowid` tie-breaks, which
  `_exec` rewrites to `%s` and `seq`. This module adds the connection, migrations, the
  transactions (`_tx`), the fence check, the lease and the byte budget.
- Fail closed, recover without a restart. Every call is one short explicit transaction
  with `statement_timeout`, `lock_timeout` and `idle_in_transaction_session_timeout` set
  on the session (a replica paused inside a fenced write would otherwise hold its FOR
  SHARE lock on the lease row, and so the lease, for as long as it stays paused). A
  paused or partitioned server answers nothing, so the server-side timeout cannot fire:
  a client-side watchdog shuts the socket down a second past it. Any OperationalError /
  InterfaceError discards the connection, and the next call reconnects once, bounded by
  the connect timeout.
  Every psycopg error leaves as a StoreError naming the location (never the password)
  and the operation; `write_problem()` also says when the database cannot be reached.
- Fencing. With a fence set (`set_fence`), every journal write first runs
  `SELECT 1 FROM leases WHERE name, holder, epoch match AND expires_at > now FOR SHARE`
  in its own transaction: no row, StaleEpochError and nothing written. FOR SHARE (not a
  plain read) makes the check hold until the commit: a contender's takeover UPDATE of
  the lease row waits for the fenced write to commit, so no write of an old epoch can
  commit after a new epoch was granted. Fenced writes do not block one another.
- The database's clock (`extract(epoch from clock_timestamp())`) decides every lease
  question: the replicas' clocks may disagree, the one database's clock is the only one
  every check and every takeover read.
- The byte budget. PostgreSQL does not give a deleted row's space back to the file
  system (VACUUM FULL would, under an exclusive lock): the tables keep their high-water
  size and new rows reuse the space. So `max_bytes` bounds the bytes the rows hold (their
  columns as stored, TOAST included, measured with `pg_column_size` without fetching
  TOAST), and the tables take more on disk (indexes, pages, TOAST chunks: about 1.8x in
  a test with 3 kB records), a size that then stays put. After every write one cheap
  query reads `pg_total_relation_size` (for the gauge, and a shrink when the tables grow
  past the budget); once a shrink ran, the next one is due when this store has written
  the room the rows had left (or the tables grew again: other replicas write too).
  `shrink` deletes the oldest history in the order and with the keeps of SQLite, then
  runs a plain VACUUM of what it pruned (no exclusive lock: autovacuum would get there,
  but only after its thresholds and naptime), so the space is reused at once.
- The transactions are READ COMMITTED whatever the server's default: a statement that
  waited on a row lock (a takeover behind a fenced write) re-reads the committed row.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from mape_k import store as _sqlite_store
from mape_k.errors import StaleEpochError, StoreError, StoreSchemaError
from mape_k.metrics import Metrics
from mape_k.store import (
    _RETAINED,
    _TIE_BREAK,
    BUDGET_KEEP_NEWEST,
    BUDGET_LOW_WATER,
    SCHEMA_VERSION,
    Fence,
    JournalStore,
    JournalWriter,
    LeaseState,
    StoreSize,
)

log = structlog.get_logger(__name__)

# Append-only, one entry per store.MIGRATIONS entry: the same tables and columns.
PG_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE iterations (
        id TEXT PRIMARY KEY,
        started_at DOUBLE PRECISION NOT NULL,
        result TEXT NOT NULL,
        record TEXT NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX iterations_started_at ON iterations (started_at);
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        policy_id TEXT NOT NULL,
        cause TEXT NOT NULL,
        target TEXT NOT NULL,
        action_type TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        dry_run BIGINT NOT NULL DEFAULT 0,
        record TEXT NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX executions_status ON executions (status);
    CREATE INDEX executions_started_at ON executions (started_at);
    CREATE TABLE outcomes (
        execution_id TEXT PRIMARY KEY,
        policy_id TEXT NOT NULL,
        cause TEXT NOT NULL,
        action_type TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        value_before DOUBLE PRECISION,
        value_after DOUBLE PRECISION,
        threshold DOUBLE PRECISION,
        time_to_stabilize_s DOUBLE PRECISION,
        recorded_at DOUBLE PRECISION NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        seq BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX outcomes_recorded_at ON outcomes (recorded_at);
    CREATE TABLE stats (
        cause TEXT NOT NULL,
        action_type TEXT NOT NULL,
        samples BIGINT NOT NULL DEFAULT 0,
        successes BIGINT NOT NULL DEFAULT 0,
        partials BIGINT NOT NULL DEFAULT 0,
        ineffective BIGINT NOT NULL DEFAULT 0,
        degradations BIGINT NOT NULL DEFAULT 0,
        unknowns BIGINT NOT NULL DEFAULT 0,
        tts_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
        tts_count BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (cause, action_type)
    );
    CREATE TABLE guard_decisions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        guard TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT NOT NULL,
        policy_id TEXT,
        until DOUBLE PRECISION
    );
    CREATE INDEX guard_decisions_at ON guard_decisions (at);
    CREATE TABLE control_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        route TEXT NOT NULL,
        body TEXT,
        caller TEXT
    );
    CREATE INDEX control_log_at ON control_log (at);
    CREATE TABLE state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    """,
    """
    CREATE TABLE alert_inbox (
        fingerprint TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
        starts_at DOUBLE PRECISION NOT NULL,
        ends_at DOUBLE PRECISION,
        seen_at DOUBLE PRECISION NOT NULL,
        labels TEXT,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        PRIMARY KEY (fingerprint, status)
    );
    """,
    """
    ALTER TABLE iterations ADD COLUMN epoch BIGINT;
    ALTER TABLE executions ADD COLUMN epoch BIGINT;
    ALTER TABLE outcomes ADD COLUMN epoch BIGINT;
    ALTER TABLE guard_decisions ADD COLUMN epoch BIGINT;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        acquired_at DOUBLE PRECISION NOT NULL,
        renewed_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    """,
)
assert len(PG_MIGRATIONS) == len(_sqlite_store.MIGRATIONS) == SCHEMA_VERSION

# Every table the schema has (integrity_ok, size); the first ones exist from schema 1.
_TABLES: tuple[str, ...] = (
    "meta",
    "iterations",
    "executions",
    "outcomes",
    "stats",
    "guard_decisions",
    "control_log",
    "state",
    "alert_inbox",
    "leases",
)
# Serialises migrations across replicas (pg_advisory_xact_lock key: "mapek" in ASCII).
_MIGRATION_LOCK = 0x6D6170656B
# A row's bytes beyond its columns: the tuple header and its line pointer.
_ROW_OVERHEAD = 28
_NOW = "extract(epoch from clock_timestamp())::double precision"
SIZE_EVERY_S = 5.0  # see PostgresStore._after_write
# The client-side watchdog fires this long after the server's statement_timeout would.
_WATCHDOG_GRACE_S = 1.0


@functools.lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    """The SQL of JournalStore (SQLite's placeholders and tie-break column) for PostgreSQL;
    SQL written for PostgreSQL (no `?`, no `rowid`) is left as it is."""
    return re.sub(r"\browid\b", "seq", sql.replace("?", "%s"))


def _display(url: str) -> tuple[str, str | None]:
    """(postgresql://user@host:port/dbname, the password or None) of a connection URL."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        raise StoreError(
            "knowledge.url is not a valid PostgreSQL connection URL (not shown: it may hold"
            " a password)"
        ) from None
    user = str(params.get("user") or os.environ.get("PGUSER") or "")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or user)
    password = params.get("password")
    where = f"{user}@{host}" if user else host
    return f"postgresql://{where}:{port}/{dbname}", None if password is None else str(password)


class _Watchdog:
    """Shuts a connection's socket down when one statement outlives its deadline.

    A stopped server (SIGSTOP, a partition) never enforces its statement_timeout and
    the kernel keeps the TCP connection open: without this a call would hang. Shutting
    the socket down makes libpq see the connection closed (an OperationalError), and the
    store discards the connection.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: tuple[int, float] | None = None  # (fd, monotonic deadline)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.fired = False

    def arm(self, fd: int, timeout_s: float) -> None:
        with self._cond:
            self._armed = (fd, time.monotonic() + timeout_s)
            self.fired = False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mapek-pgstore-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._armed = None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._armed = None
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._armed is None:
                    self._cond.wait()
                    continue
                fd, deadline = self._armed
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                # Under the lock: the caller cannot disarm and close the fd meanwhile.
                try:
                    sock = socket.socket(fileno=os.dup(fd))
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    finally:
                        sock.close()
                except OSError:
                    pass  # already closed: the statement fails on its own
                self.fired = True
                self._armed = None


Conn: TypeAlias = psycopg.Connection[dict[str, Any]]
Cursor: TypeAlias = psycopg.Cursor[dict[str, Any]]


class _PgWriter:
    """A JournalWriter over the cursor of an open PostgresStore transaction; `run` is the
    store's `_exec` (the dialect, the watchdog, the bytes written)."""

    def __init__(self, cur: Cursor, run: Callable[[Cursor, str, Sequence[Any]], None]) -> None:
        self._cur = cur
        self._run = run

    def execute(self, sql: str, params: Sequence[Any]) -> int:
        self._run(self._cur, sql, params)
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for params in rows:
            self._run(self._cur, sql, params)


class PostgresStore(JournalStore):
    """Synchronous access to the knowledge store on PostgreSQL; each call is one short
    transaction. The same public interface and semantics as `Store` (SQLite), plus the
    leader lease (`lease_acquire`, `lease_read`, `lease_release`) and fenced writes."""

    def __init__(
        self,
        url: str,
        *,
        max_bytes: int | None = None,
        metrics: Metrics | None = None,
        connect_timeout_s: float = 3.0,
        statement_timeout_s: float = 5.0,
        lease_name: str = "mapek",
    ) -> None:
        """Use `PostgresStore.open(url)`: it validates and migrates the database."""
        self._url = url
        self._location, self._password = _display(url)
        params = conninfo_to_dict(url)
        ms = max(1, int(statement_timeout_s * 1000))
        # Ours after the URL's own options (a search_path, say): the session's timeouts.
        # A transaction left idle (the replica paused or frozen between two statements,
        # past its fence check) is ended by the server after the same bound, so the lock
        # it holds on the lease row cannot keep a contender from taking over.
        self._options = " ".join(
            part
            for part in (
                str(params.get("options") or ""),
                (
                    f"-c statement_timeout={ms} -c lock_timeout={ms}"
                    f" -c idle_in_transaction_session_timeout={ms}"
                ),
            )
            if part
        )
        self._application_name = str(params.get("application_name") or "mape-k")
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._lease_name = lease_name
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._lock = threading.Lock()
        self._conn: Conn | None = None
        self._closed = False
        self._watchdog = _Watchdog()
        self._schema_version = 0
        self._write_failures: dict[str, tuple[float, str]] = {}
        self._connect_failure: str | None = None
        self._shrink_above = max_bytes
        # Since the last shrink: the bytes this store wrote, and the room its rows had
        # left under the budget then (None: no shrink yet). See _after_write.
        self._written = 0
        self._room: int | None = None
        # The size is read after a write at most every SIZE_EVERY_S, or once a hundredth
        # of the budget was written since it was last read: it is the dearest statement
        # of a write (half an iteration's store time when read after each).
        self._sized_at: float | None = None
        self._written_when_sized = 0
        self._tx_bytes = 0
        self._columns: dict[str, list[str]] | None = None
        self._fence: Fence | None = None

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        max_bytes: int | None = None,
        metrics: Metrics | None = None,
        connect_timeout_s: float = 3.0,
        statement_timeout_s: float = 5.0,
        lease_name: str = "mapek",
    ) -> PostgresStore:
        """Connect to `url`, refuse a newer or foreign schema, migrate; raise StoreError
        (StoreSchemaError for a schema we must not touch) when it cannot."""
        store = cls(
            url,
            max_bytes=max_bytes,
            metrics=metrics,
            connect_timeout_s=connect_timeout_s,
            statement_timeout_s=statement_timeout_s,
            lease_name=lease_name,
        )
        try:
            store._prepare()
        except BaseException:
            store.close()
            raise
        return store

    def _prepare(self) -> None:
        version = self._read_version("open")  # read-only first: a refused db is not written
        if version > SCHEMA_VERSION:
            raise self._newer(version)
        while version < SCHEMA_VERSION:
            version = self._migrate_one()
        self._schema_version = SCHEMA_VERSION
        self._note_writable()
        self._after_write()
        log.info("store_opened", location=self._location, schema_version=self._schema_version)

    def _newer(self, version: int) -> StoreSchemaError:
        return StoreSchemaError(
            f"{self._location}: written by a newer mape-k (schema {version} > {SCHEMA_VERSION});"
            " refusing to open — upgrade mape-k or point knowledge.url elsewhere"
        )

    def _version_in(self, cur: Cursor) -> int:
        self._exec(
            cur,
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename = ANY(%s)",
            (list(_TABLES),),
        )
        tables = {row["tablename"] for row in cur.fetchall()}
        if "meta" not in tables:
            if tables:
                raise StoreSchemaError(
                    f"{self._location} has tables named like a mape-k knowledge store"
                    f" ({', '.join(sorted(tables))}) but no meta table: not a mape-k store;"
                    " refusing to open — point knowledge.url elsewhere"
                )
            return 0
        self._exec(cur, "SELECT value FROM meta WHERE key = 'schema_version'", ())
        row = cur.fetchone()
        try:
            return int(row["value"]) if row is not None else -1
        except (TypeError, ValueError):
            return -1

    def _read_version(self, what: str) -> int:
        with self._tx(what, write=False) as cur:
            version = self._version_in(cur)
        if version < 0:
            raise StoreSchemaError(
                f"{self._location}: no readable schema_version in meta; refusing to open"
            )
        return version

    def _migrate_one(self) -> int:
        """Apply the next migration under the advisory lock (another replica may have
        applied it meanwhile: then nothing); return the version now."""
        with self._tx("migrate", write=True, budget=False) as cur:
            self._exec(cur, "SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            version = self._version_in(cur)
            if version < 0:
                raise StoreSchemaError(
                    f"{self._location}: no readable schema_version in meta; refusing to open"
                )
            if version > SCHEMA_VERSION:
                raise self._newer(version)
            if version == SCHEMA_VERSION:
                return version
            target = version + 1
            try:
                self._exec(cur, PG_MIGRATIONS[version], None)
                self._exec(
                    cur,
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(target),),
                )
            except psycopg.Error as exc:
                raise StoreError(
                    f"{self._location}: migration to schema {target} failed:"
                    f" {self._scrub(str(exc))}"
                ) from exc
        log.info("store_migrated", location=self._location, from_version=version, to_version=target)
        return target

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._closed = True
            self._discard()
        self._watchdog.stop()

    @property
    def location(self) -> str:
        """Where the store is, for logs and /readyz: postgresql://user@host:port/dbname."""
        return self._location

    def integrity_ok(self) -> bool:
        """True when the database answers and every table of the schema exists."""
        try:
            rows = self._read(
                "SELECT count(*) AS n FROM pg_tables WHERE schemaname = current_schema()"
                " AND tablename = ANY(%s)",
                (list(_TABLES),),
            )
        except StoreError:
            return False
        return int(rows[0]["n"]) == len(_TABLES)

    # --- plumbing --------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        text = " ".join(text.split())  # one line
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a broken connection may fail to close
                log.debug("store_connection_close_failed", location=self._location)

    def _connection(self) -> Conn:
        """The open connection, or a new one (one attempt, bounded by connect_timeout)."""
        if self._closed:
            raise StoreError(f"{self._location}: store is closed")
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._discard()
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=False,
                row_factory=dict_row,
                connect_timeout=max(1, math.ceil(self._connect_timeout_s)),
                options=self._options,
                application_name=self._application_name,
            )
            # The lease and the fence rely on READ COMMITTED: a statement that waited on
            # a row lock re-reads the row as committed (whatever the server's default).
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        except psycopg.Error as exc:
            reason = self._scrub(str(exc)) or type(exc).__name__
            first = self._connect_failure is None
            self._connect_failure = f"cannot reach {self._location}: {reason}"
            self._note_writable()
            if first:
                log.error("store_unreachable", location=self._location, error=reason)
            raise StoreError(self._connect_failure) from None
        if self._connect_failure is not None:
            log.info("store_reachable", location=self._location)
        self._connect_failure = None
        self._note_writable()
        self._conn = conn
        return conn

    def _exec(
        self, cur: Cursor, sql: str, params: Sequence[Any] | Mapping[str, Any] | None
    ) -> None:
        """One statement (no params: a script of several), under the watchdog. SQL shared
        with SQLite (JournalStore) is rewritten first: `?` to `%s`, `rowid` to `seq`."""
        sql = _dialect(sql)
        values = params.values() if isinstance(params, Mapping) else params or ()
        self._tx_bytes += sum(len(value) for value in values if isinstance(value, str))
        self._watchdog.arm(cur.connection.fileno(), self._statement_timeout_s + _WATCHDOG_GRACE_S)
        try:
            cur.execute(sql.encode(), params or None)
        finally:
            self._watchdog.disarm()

    def _guarded(self, conn: Conn, call: str) -> None:
        """commit / rollback, under the watchdog."""
        self._watchdog.arm(conn.fileno(), self._statement_timeout_s + _WATCHDOG_GRACE_S)
        try:
            if call == "commit":
                conn.commit()
            else:
                conn.rollback()
        finally:
            self._watchdog.disarm()

    def _rollback(self, conn: Conn) -> None:
        if conn.closed or conn.broken:
            self._discard()
            return
        try:
            self._guarded(conn, "rollback")
        except psycopg.Error:
            self._discard()

    def _error(self, what: str, exc: psycopg.Error) -> StoreError:
        text = self._scrub(str(exc)) or type(exc).__name__
        if self._watchdog.fired:
            text = (
                f"no answer in {self._statement_timeout_s + _WATCHDOG_GRACE_S:g} s"
                f" (the database is stalled or unreachable): {text}"
            )
        return StoreError(f"{self._location}: {what}: {text}")

    @contextmanager
    def _tx(
        self, what: str, *, write: bool, fenced: bool = False, budget: bool = True
    ) -> Iterator[Cursor]:
        """One transaction: fence check first (fenced writes), commit, errors as
        StoreError; a lost connection is discarded for the next call to replace."""
        with self._lock:
            conn = self._connection()
            self._tx_bytes = 0
            try:
                with conn.cursor() as cur:
                    if fenced and self._fence is not None:
                        self._check_fence(cur, what, self._fence)
                    yield cur
                self._guarded(conn, "commit")
            except StaleEpochError:
                self._rollback(conn)
                raise
            except psycopg.Error as exc:
                error = self._error(what, exc)
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                    self._discard()
                else:
                    self._rollback(conn)
                if write:
                    self._write_error(what, error)
                raise error from None
            except BaseException:
                self._rollback(conn)
                raise
            if write:
                self._written += self._tx_bytes
                self._write_succeeded(what)
        if write and budget:
            self._after_write()

    @contextmanager
    def _write(
        self, what: str, *, fenced: bool = False, budget: bool = True
    ) -> Iterator[JournalWriter]:
        with self._tx(what, write=True, fenced=fenced, budget=budget) as cur:
            yield _PgWriter(cur, self._exec)

    def _check_fence(self, cur: Cursor, what: str, fence: Fence) -> None:
        self._exec(
            cur,
            "SELECT 1 FROM leases WHERE name = %s AND holder = %s AND epoch = %s"  # noqa: S608
            f" AND expires_at > {_NOW} FOR SHARE",
            (self._lease_name, fence.holder, fence.epoch),
        )
        if cur.fetchone() is None:
            raise StaleEpochError(
                f"{self._location}: {what}: refused, holder {fence.holder!r} epoch"
                f" {fence.epoch} no longer holds lease {self._lease_name!r}"
            )

    def _write_error(self, what: str, error: StoreError) -> None:
        """A failed write: "what: reason" in the log, the reason in write_problem."""
        logged = str(error).removeprefix(f"{self._location}: ")
        self._write_failed(what, logged.removeprefix(f"{what}: "), logged=logged)

    def _note_writable(self) -> None:
        if self._metrics is not None:
            bad = self._write_failures or self._connect_failure is not None
            self._metrics.knowledge_writable.set(0 if bad else 1)

    def write_problem(self) -> str | None:
        """Why the store cannot write now: the last connection attempt failed, or a kind
        of write failed and has not succeeded since; None when neither."""
        return self._connect_failure or super().write_problem()

    def _log_context(self) -> dict[str, str]:
        return {"location": self._location}

    def _read(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any], what: str | None = None
    ) -> list[dict[str, Any]]:
        """One read transaction; its errors name `what`, by default the public method
        that read (the first caller not named with an underscore)."""
        if what is None:
            frame = inspect.currentframe()
            caller = frame.f_back if frame is not None else None
            while caller is not None and caller.f_code.co_name.startswith("_"):
                caller = caller.f_back
            what = caller.f_code.co_name if caller is not None else "read"
            del frame, caller
        with self._tx(what, write=False) as cur:
            self._exec(cur, sql, params)
            return cur.fetchall()

    # --- the leader lease ------------------------------------------------------------

    @staticmethod
    def _lease(row: Mapping[str, Any]) -> LeaseState:
        return LeaseState(
            name=row["name"],
            holder=row["holder"],
            epoch=int(row["epoch"]),
            acquired_at=float(row["acquired_at"]),
            renewed_at=float(row["renewed_at"]),
            expires_at=float(row["expires_at"]),
            now=float(row["now"]),
        )

    def lease_acquire(self, holder: str, ttl_s: float) -> LeaseState:
        """Take the lease (free or expired: epoch + 1) or renew it (ours and unexpired:
        same epoch); return the row as it stands after the attempt, whoever holds it."""
        with self._tx("lease_acquire", write=True, budget=False) as cur:
            self._exec(
                cur,
                "INSERT INTO leases AS l (name, holder, epoch, acquired_at, renewed_at,"  # noqa: S608
                " expires_at)"
                " SELECT %(name)s, %(holder)s, 1, c.now, c.now, c.now + %(ttl)s"
                f" FROM (SELECT {_NOW} AS now) AS c"
                " ON CONFLICT (name) DO UPDATE SET"
                " holder = excluded.holder,"
                " epoch = CASE WHEN l.holder = excluded.holder"
                " AND l.expires_at > excluded.renewed_at THEN l.epoch ELSE l.epoch + 1 END,"
                " acquired_at = CASE WHEN l.holder = excluded.holder"
                " AND l.expires_at > excluded.renewed_at THEN l.acquired_at"
                " ELSE excluded.acquired_at END,"
                " renewed_at = excluded.renewed_at,"
                " expires_at = excluded.expires_at"
                " WHERE l.holder = excluded.holder OR l.expires_at <= excluded.renewed_at"
                " RETURNING l.name, l.holder, l.epoch, l.acquired_at, l.renewed_at,"
                " l.expires_at, l.renewed_at AS now",
                {"name": self._lease_name, "holder": holder, "ttl": float(ttl_s)},
            )
            row = cur.fetchone()
            if row is None:  # someone else holds it, unexpired
                self._exec(
                    cur,
                    f"SELECT *, {_NOW} AS now FROM leases WHERE name = %s",  # noqa: S608
                    (self._lease_name,),
                )
                row = cur.fetchone()
            if row is None:  # pragma: no cover - the upsert made or kept the row
                raise StoreError(f"{self._location}: lease_acquire: the lease row vanished")
            return self._lease(row)

    def lease_read(self) -> LeaseState | None:
        """The lease row and the database's clock now, or None (never taken)."""
        rows = self._read(
            f"SELECT *, {_NOW} AS now FROM leases WHERE name = %s",  # noqa: S608
            (self._lease_name,),
            "lease_read",
        )
        return self._lease(rows[0]) if rows else None

    def lease_release(self, holder: str, epoch: int) -> bool:
        """Expire the lease now if (holder, epoch) still hold it: a graceful shutdown
        hands over at once. False when they did not (nothing changed)."""
        with self._tx("lease_release", write=True, budget=False) as cur:
            self._exec(
                cur,
                f"UPDATE leases SET expires_at = {_NOW} WHERE name = %s AND holder = %s"  # noqa: S608
                f" AND epoch = %s AND expires_at > {_NOW}",
                (self._lease_name, holder, epoch),
            )
            return cur.rowcount == 1

    # --- retention -------------------------------------------------------------------

    def _reclaim(self, tables: Sequence[str]) -> None:
        self._vacuum(tables)

    def size(self) -> StoreSize:
        """The bytes of our tables (with their indexes and TOAST): one cheap query, done
        after every write. `free` and `wal` are 0 (PostgreSQL's own business)."""
        rows = self._read(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint AS bytes"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(%s)",
            (list(_TABLES),),
            "cannot read the size",
        )
        return StoreSize(database=int(rows[0]["bytes"]), free=0, wal=0)

    def _after_write(self) -> None:
        """Keep the byte budget: shrink when the tables outgrow it (the leader does: a
        follower, fenced at epoch 0, leaves the shared tables to it)."""
        if self._max_bytes is None and self._metrics is None:
            return
        if self._fence is not None and self._fence.epoch == 0:
            return
        now = time.monotonic()
        step = (self._max_bytes or 0) // 100
        if (
            self._sized_at is not None
            and now - self._sized_at < SIZE_EVERY_S
            and (not step or self._written - self._written_when_sized < step)
        ):
            return
        self._sized_at, self._written_when_sized = now, self._written
        total: int | None = None
        try:
            size = self.size()
            total = size.total
            over = self._shrink_above is not None and size.total > self._shrink_above
            # The tables do not shrink (deleted rows' space is reused inside them), so
            # past a shrink their size says little: what this store wrote since, against
            # the room the rows had left, says when to look again.
            filled = self._room is not None and self._written > self._room
            if over or filled:
                self.shrink()
                size = self.size()
        except StoreError:
            # The write itself succeeded; a failed delete was logged (store_write_failed)
            # and shows in /readyz. A shrink that failed (a scan past the statement
            # timeout, say) is tried again once the tables grew a little, not every write.
            if total is not None and self._max_bytes is not None:
                self._shrink_above = max(self._shrink_above or 0, total) + self._max_bytes // 20
                self._room = None
            return
        if self._metrics is not None:
            self._metrics.knowledge_bytes.set(size.total)

    def _row_sql(self, table: str, alias: str) -> str:
        """The bytes one row of `table` holds, as SQL: its columns as stored (a TOASTed
        value counts its stored size, and is not fetched) plus the tuple header."""
        if self._columns is None:
            rows = self._read(
                "SELECT table_name AS t, column_name AS c FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ANY(%s)"
                " ORDER BY table_name, ordinal_position",
                (list(_TABLES),),
                "cannot read the schema",
            )
            columns: dict[str, list[str]] = {}
            for row in rows:
                columns.setdefault(row["t"], []).append(row["c"])
            self._columns = columns
        parts = [f'COALESCE(pg_column_size({alias}."{name}"), 0)' for name in self._columns[table]]
        return " + ".join([str(_ROW_OVERHEAD), *parts])

    def _live_bytes(self) -> int:
        """What the rows of our tables hold (one scan of the tables, not of TOAST)."""
        parts = " + ".join(
            f"(SELECT COALESCE(SUM({self._row_sql(table, 't')}), 0) FROM {table} AS t)"  # noqa: S608
            for table in _TABLES
        )
        rows = self._read(f"SELECT ({parts})::bigint AS bytes", (), "cannot read the size")
        return int(rows[0]["bytes"])

    def shrink(self) -> dict[str, int]:
        """Delete the oldest history until the rows are back under the byte budget.

        Tables go in the order of store._RETAINED (decision records first), each oldest
        rows first and in batches, until the bytes the rows hold are down to
        BUDGET_LOW_WATER of the budget; the newest BUDGET_KEEP_NEWEST rows of each table,
        `stats`, `state` and unfinished executions always stay. Then a plain VACUUM
        makes their space reusable: PostgreSQL keeps the tables' size (their high-water
        mark) and new rows fill them. Returns the rows deleted per table.
        """
        if self._max_bytes is None:
            return {}
        target = int(self._max_bytes * BUDGET_LOW_WATER)
        before = self.size()
        live = self._live_bytes()
        deleted: dict[str, int] = {}
        for table, at, keep in _RETAINED:
            seq = _TIE_BREAK.get(table, "seq")
            while live > target:
                prunable = self._prunable(table, keep)
                if prunable == 0:
                    break
                batch = self._batch(prunable, live, target)
                with self._tx("shrink", write=True, budget=False) as cur:
                    # Table and column names come from constants and the catalog.
                    self._exec(
                        cur,
                        f"WITH gone AS (DELETE FROM {table} AS t WHERE {seq} IN"  # noqa: S608
                        f" (SELECT {seq} FROM {table} WHERE {keep}"
                        f" ORDER BY {at}, {seq} LIMIT %s) RETURNING {self._row_sql(table, 't')}"
                        " AS bytes) SELECT count(*) AS n, COALESCE(SUM(bytes), 0)::bigint AS bytes"
                        " FROM gone",
                        (batch,),
                    )
                    gone = cur.fetchone()
                if gone is None or int(gone["n"]) == 0:
                    break
                deleted[table] = deleted.get(table, 0) + int(gone["n"])
                live -= int(gone["bytes"])
        self._vacuum(list(deleted))
        after = self.size()
        self._pruned("bytes", deleted)
        # Next: once this store wrote the room the rows have left, or once the tables
        # grew (other replicas write too) a twentieth of the budget past their size now.
        self._room = max(0, self._max_bytes - live)
        self._written = 0
        self._written_when_sized = 0
        self._shrink_above = max(self._max_bytes, after.total) + self._max_bytes // 20
        if live > self._max_bytes:
            log.warning(
                "store_over_budget",
                location=self._location,
                bytes=live,
                max_bytes=self._max_bytes,
                why="what is left is never pruned: statistics, state, unfinished executions"
                f" and the newest {BUDGET_KEEP_NEWEST} rows of each journal table",
            )
        else:
            log.info(
                "store_shrunk",
                location=self._location,
                row_bytes=live,
                table_bytes_before=before.total,
                table_bytes_after=after.total,
                max_bytes=self._max_bytes,
            )
        return deleted

    def _vacuum(self, tables: Sequence[str]) -> None:
        """A plain VACUUM of the tables pruned: their dead rows' space is reused at once
        (autovacuum would get there, but only after a threshold of dead rows and its
        naptime, while every write under a byte budget is checked). Not FULL: no
        exclusive lock, the other replicas go on; a table another VACUUM holds (a replica,
        autovacuum) is skipped. The tables keep their size."""
        if not tables:
            return
        with self._lock:
            conn = self._connection()
            try:
                conn.autocommit = True  # VACUUM cannot run inside a transaction
                try:
                    with conn.cursor() as cur:
                        # Names from the constant _RETAINED, never from input.
                        self._exec(cur, f"VACUUM (SKIP_LOCKED) {', '.join(tables)}", None)
                finally:
                    if not conn.closed and not conn.broken:
                        conn.autocommit = False
            except psycopg.Error as exc:
                error = self._error("vacuum", exc)
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                    self._discard()
                self._write_error("vacuum", error)
                raise error from None
            self._write_succeeded("vacuum")
