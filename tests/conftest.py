"""Shared test fixtures: fresh metrics registry, fixture paths, and a leak check for tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from pg_support import PostgresProcess, start_postgres
from prometheus_client import CollectorRegistry

from fakes import FIXTURES, FakeClock
from mape_k import logs
from mape_k.metrics import Metrics


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def pg() -> Iterator[PostgresProcess]:
    """A throwaway PostgreSQL cluster of its own for the test (pg_support)."""
    with start_postgres() as handle:
        yield handle


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that ran `logs.configure` (the CLI does) must not filter the next test's logs."""
    yield
    structlog.reset_defaults()
    logs.reset()


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    if leaked:
        for task in leaked:
            task.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"test left {len(leaked)} task(s) running: {[t.get_name() for t in leaked]}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
