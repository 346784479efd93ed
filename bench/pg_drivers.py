"""Issue 17's driver choice, by measurement: what one iteration writes, on PostgreSQL through
psycopg 3 (async) and asyncpg, beside the SQLite store's own writes (the floor).

Against a throwaway cluster on loopback (tests/integration/pg_support.py: run as root it
runs as Debian's `postgres` user), each driver does, N times in a row, what
`Store.record_iteration` + `Store.upsert_execution` do per iteration — one transaction
upserting a ~4 kB JSON decision record and a ~1 kB execution row — then reads the newest
10 records (what /stats reads). The SQLite store does the same through its real methods on
a file in a temporary directory. Figures: connect time, median and p99 per iteration.

Not in `make bench` (it needs the `ha` extra: `pip install -e '.[ha]'` adds psycopg;
asyncpg by hand): `python -m bench.pg_drivers [--iterations N] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, quiet_logs, table
from mape_k.store import Store

sys.path.insert(0, str(REPO / "tests" / "integration"))
from pg_support import start_postgres  # the tests' harness, by path

SCHEMA = """
CREATE TABLE IF NOT EXISTS iterations (id text PRIMARY KEY, started_at double precision,
  result text, record jsonb);
CREATE TABLE IF NOT EXISTS executions (id text PRIMARY KEY, target text, status text,
  started_at double precision, record jsonb);
CREATE INDEX IF NOT EXISTS iterations_started ON iterations (started_at DESC);
TRUNCATE iterations, executions;
"""
UPSERT_ITERATION = (
    "INSERT INTO iterations (id, started_at, result, record) VALUES ({}, {}, {}, {})"
    " ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at,"
    " result = excluded.result, record = excluded.record"
)
UPSERT_EXECUTION = (
    "INSERT INTO executions (id, target, status, started_at, record) VALUES ({}, {}, {}, {}, {})"
    " ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record"
)
NEWEST = "SELECT record FROM iterations ORDER BY started_at DESC LIMIT 10"


def _record(i: int) -> dict[str, Any]:
    return {"id": f"it-{i}", "why": "x" * 3800, "candidates": [{"score": 0.5}] * 4}


def _execution(i: int) -> dict[str, Any]:
    return {"id": f"ex-{i % 50}", "status": "completed", "detail": "y" * 900}


def _summary(name: str, connect_s: float, times: list[float]) -> dict[str, Any]:
    times = sorted(times)
    return {
        "driver": name,
        "connect_ms": round(connect_s * 1000, 2),
        "median_ms": round(statistics.median(times) * 1000, 3),
        "p99_ms": round(times[int(0.99 * (len(times) - 1))] * 1000, 3),
    }


async def _timed(n: int, one: Callable[[int], Awaitable[None]]) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        await one(i)
        times.append(time.perf_counter() - started)
    return times


async def psycopg_run(dsn: str, n: int) -> dict[str, Any]:
    import psycopg  # noqa: PLC0415 - optional: the `ha` extra
    from psycopg.types.json import Jsonb  # noqa: PLC0415

    started = time.perf_counter()
    conn = await psycopg.AsyncConnection.connect(dsn)
    connect_s = time.perf_counter() - started
    await conn.execute(SCHEMA)
    await conn.commit()
    p = "%s"

    async def one(i: int) -> None:
        async with conn.transaction():
            await conn.execute(
                UPSERT_ITERATION.format(p, p, p, p),
                (f"it-{i}", float(i), "acted", Jsonb(_record(i))),
            )
            await conn.execute(
                UPSERT_EXECUTION.format(p, p, p, p, p),
                (f"ex-{i % 50}", "charter", "completed", float(i), Jsonb(_execution(i))),
            )
        if i % 10 == 0:
            await (await conn.execute(NEWEST)).fetchall()

    times = await _timed(n, one)
    await conn.close()
    return _summary(f"psycopg {psycopg.__version__} (async)", connect_s, times)


async def asyncpg_run(dsn: str, n: int) -> dict[str, Any]:
    import asyncpg  # noqa: PLC0415 - optional, by hand

    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    connect_s = time.perf_counter() - started
    await conn.execute(SCHEMA)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    it = UPSERT_ITERATION.format("$1", "$2", "$3", "$4")
    ex = UPSERT_EXECUTION.format("$1", "$2", "$3", "$4", "$5")

    async def one(i: int) -> None:
        async with conn.transaction():
            await conn.execute(it, f"it-{i}", float(i), "acted", _record(i))
            await conn.execute(ex, f"ex-{i % 50}", "charter", "completed", float(i), _execution(i))
        if i % 10 == 0:
            await conn.fetch(NEWEST)

    times = await _timed(n, one)
    await conn.close()
    return _summary(f"asyncpg {asyncpg.__version__}", connect_s, times)


async def sqlite_run(n: int) -> dict[str, Any]:
    from builders import execution  # noqa: PLC0415 - the tests' builders, by path

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        store = Store.open(Path(tmp) / "k.sqlite3")
        connect_s = time.perf_counter() - started
        executions = [execution(id=f"ex-{i}") for i in range(50)]

        async def one(i: int) -> None:
            store.record_iteration(
                f"it-{i}", started_at=float(i), result="acted", record=_record(i)
            )
            store.upsert_execution(executions[i % 50])
            if i % 10 == 0:
                store.recent_iterations(10)

        times = await _timed(n, one)
        store.close()
    return _summary("SQLite store (floor)", connect_s, times)


async def main_async(n: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO / "tests"))
    rows = [await sqlite_run(n)]
    with start_postgres() as postgres:
        rows += [await run(postgres.dsn, n) for run in (psycopg_run, asyncpg_run)]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    quiet_logs()
    rows = asyncio.run(main_async(args.iterations))
    print(
        table(
            ["driver", "connect ms", "median ms / iteration", "p99 ms / iteration"],
            [[r["driver"], r["connect_ms"], r["median_ms"], r["p99_ms"]] for r in rows],
        )
    )
    if args.json is not None:
        args.json.write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
