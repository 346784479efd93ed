"""Charter API clients: the Protocol, the HTTP client and the in-memory mock.

`get_charter_client` picks one from config. Implementations are imported lazily so that
`mape_k.sim.committee` can import `base` without importing the clients back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mape_k.config import CharterConfig, CharterMode

if TYPE_CHECKING:
    from mape_k.integrations.charter.base import CharterClient
    from mape_k.metrics import Metrics


def get_charter_client(
    config: CharterConfig,
    *,
    metrics: Metrics | None = None,
    clock: Callable[[], float] | None = None,
    epoch: Callable[[], int | None] | None = None,
) -> CharterClient:
    """`HttpCharterClient` for mode http, else a `MockCharterClient` (seed/regime from config)."""
    if config.mode is CharterMode.HTTP:
        from mape_k.integrations.charter.http import HttpCharterClient  # noqa: PLC0415

        return HttpCharterClient(config, metrics=metrics, epoch=epoch)
    from mape_k.integrations.charter.mock import MockCharterClient  # noqa: PLC0415

    return MockCharterClient(
        clock=clock or time.time, seed=config.mock_seed, regime=config.mock_regime
    )
