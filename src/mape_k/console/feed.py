"""The live decision feed: each finished decision record, fanned out to the open streams.

The orchestrator calls `publish` with every record it keeps (its `listeners`); each
/ui/events stream holds one bounded queue. A stream that falls `QUEUE_SIZE` records behind
is closed (the browser's EventSource reconnects and reloads what it missed) rather than
let it grow without bound. `close` ends every stream at once: shutdown never waits on a
browser.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog

log = structlog.get_logger(__name__)

QUEUE_SIZE = 100
_END: dict[str, Any] = {}  # the sentinel a stream ends on


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a stream sends of a record: enough for one row of the decisions table."""
    causes = [
        f"{c.get('name')}/{c.get('target')}"
        for c in record.get("causes") or ()
        if isinstance(c, Mapping)
    ]
    execution = record.get("execution")
    action = None
    if isinstance(execution, Mapping):
        action = ", ".join(
            str(a.get("type")) for a in execution.get("actions") or () if isinstance(a, Mapping)
        )
    choice = record.get("choice")
    return {
        "id": record.get("id"),
        "started_at": record.get("started_at"),
        "result": record.get("result"),
        "why": choice.get("why") if isinstance(choice, Mapping) else None,
        "causes": causes,
        "action": action or None,
    }


class DecisionFeed:
    """One owner of the open streams' queues."""

    def __init__(self, *, max_streams: int) -> None:
        self.max_streams = max_streams
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self._closed = False

    @property
    def streams(self) -> int:
        return len(self._queues)

    def publish(self, record: Mapping[str, Any]) -> None:
        """Hand a finished record to every stream (called on the loop, never blocks)."""
        if not self._queues:
            return
        item = summary(record)
        for queue in list(self._queues):
            if queue.qsize() >= QUEUE_SIZE:  # the one place left is the end's
                log.warning("console_stream_dropped", reason=f"{QUEUE_SIZE} records behind")
                self._end(queue)
            else:
                queue.put_nowait(item)

    def open(self) -> asyncio.Queue[dict[str, Any]] | None:
        """A new stream's queue; None when the feed is closed or `max_streams` are open."""
        if self._closed or len(self._queues) >= self.max_streams:
            return None
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE + 1)
        self._queues.add(queue)
        return queue

    def release(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues.discard(queue)

    def _end(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_END)

    async def close(self, _app: object = None) -> None:
        """End every stream (aiohttp's on_shutdown: before the server waits for handlers)."""
        self._closed = True
        for queue in list(self._queues):
            self._end(queue)

    @staticmethod
    def ended(item: Mapping[str, Any]) -> bool:
        return item is _END
