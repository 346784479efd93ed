"""Who may act: the leader lease of replicas sharing one PostgreSQL store.

A single node (the SQLite file) always leads, with no epoch. Replicas sharing a store
(`knowledge.url`) contend for one lease row in it (`ha.lease_name`), renewed every third of
`ha.lease_ttl_s`. The database decides, by its own clock, who holds the lease and with
which epoch (an acquisition after a lapse increments it); this module only asks and keeps
the answer. Fencing is in three places, none trusting this replica's belief alone:

* **here**: this replica believes it leads only until `sent + ttl - margin` by its own
  monotonic clock, where `sent` is when it *sent* the renewal the database granted. The
  database set `expires_at = db_now + ttl` with db_now at or after `sent`, so this
  replica stops acting before any other replica can take the lease over;
* **the store**: every fenced write (journal entry, state) commits only while the lease
  row still says this holder and epoch, unexpired (PostgresStore; `StaleEpochError`
  otherwise), and the executor writes its "before" entry before each action: a replica
  paused past its lease cannot even record an action, so it does not send one;
* **the Charter**: every mutating call carries the epoch (`X-Mapek-Epoch`) beside its
  idempotency key; a Charter that has seen a newer epoch refuses an older one.

A follower runs Monitor, Analyze and Plan (for `/readyz`, `/stats` and the console) and
executes nothing: the `leader` guard blocks every policy with the reason, and its fenced
writes would be refused anyway (its fence is epoch 0). Becoming leader, it takes over what
the previous leader left in the shared store (`take_over()`: the orchestrator restores the
envelope, holds, knowledge and pending verifications before its first decision).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from mape_k.config import HAConfig
from mape_k.errors import MapekError
from mape_k.metrics import Metrics
from mape_k.store import Fence, LeaseState
from mape_k.storeio import SharedStore

log = structlog.get_logger(__name__)

MARGIN_SHARE = 0.1  # of the TTL: this replica's lease ends this much before the database's
MAX_MARGIN_S = 2.0
EXPIRY_SLACK_S = 0.05  # a follower tries this long after the lease it saw should expire


class Leadership:
    """This replica's role, kept from the database's answers (one owner: the epoch)."""

    def __init__(
        self,
        store: SharedStore | None,
        *,
        replica_id: str,
        config: HAConfig,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.replica_id = replica_id
        self._config = config
        self._monotonic = monotonic
        self._epoch: int | None = None  # the epoch this replica leads with, while it does
        self._valid_until = 0.0  # monotonic time its lease ends, by its own reckoning
        self._lease: LeaseState | None = None  # the database's last answer
        self._read_at = 0.0  # monotonic time of that answer
        self._problem: str | None = None  # why the last renewal failed
        self._takeover_pending = False
        self._led_epoch: int | None = None  # the epoch of the last takeover done
        self._last_epoch = 0  # the latest epoch this replica held (sent with its calls)
        self._continuous = False  # the epoch led now follows this replica's last one
        self._on_elected: Callable[[], None] | None = None
        if store is not None:
            store.set_fence(Fence(replica_id, 0))  # refused until this replica leads
        if metrics is not None:  # read at scrape time: a lease that lapsed reads 0 at once
            metrics.leader.set_function(lambda: 1.0 if self.leading() else 0.0)
            metrics.lease_epoch.set_function(
                lambda: float(self._lease.epoch) if self._lease is not None else 0.0
            )

    @property
    def shared(self) -> bool:
        return self._store is not None

    @property
    def ttl_s(self) -> float:
        return self._config.lease_ttl_s

    def leading(self) -> bool:
        if self._store is None:
            return True
        return self._epoch is not None and self._monotonic() < self._valid_until

    def epoch(self) -> int | None:
        """This replica's epoch while it leads, else None (calls send `call_epoch()`)."""
        return self._epoch if self.leading() else None

    def call_epoch(self) -> int | None:
        """The epoch sent with every Charter call: this replica's latest, even after its
        lease lapsed (a late call or undo of a stale leader must carry its old epoch, so
        a Charter that saw a newer one refuses it); 0 before it ever led; None alone."""
        if self._store is None:
            return None
        return self._last_epoch

    def not_leading(self) -> str | None:
        """Why this replica must not act (None: it leads, and has taken over)."""
        if self.leading():
            if self._takeover_pending:
                return f"taking over (epoch {self._epoch}): restoring what the last leader left"
            return None
        problem = self.lease_problem()
        if problem is not None:
            return problem
        lease = self._lease
        assert lease is not None  # lease_problem says so while none was read
        if lease.holder == self.replica_id:
            return f"follower: this replica's lease (epoch {lease.epoch}) lapsed"
        left = lease.expires_at - lease.now
        return f"follower: {lease.holder} leads (epoch {lease.epoch}, lease for {left:.1f} s)"

    def lease_problem(self) -> str | None:
        """Why the lease cannot be read from here (so no replica may lead, as far as this
        one knows), or None; None too while this replica leads."""
        if self._store is None or self.leading():
            return None
        if self._problem is not None:
            return f"no leader lease: {self._problem}"
        if self._lease is None:
            return "follower: no lease read yet"
        return None

    def takeover_due(self) -> bool:
        """This replica gained the lease (a new epoch) and has not restored yet what the
        previous leader left: the caller does that before deciding anything, then says
        `took_over()` (a restore that fails stays due: nothing is decided meanwhile)."""
        return self._takeover_pending and self.leading()

    def took_over(self, epoch: int | None) -> None:
        """The restore for `epoch` (as `epoch()` said when it began) is done; if the lease
        changed hands meanwhile, the takeover stays due for the new epoch."""
        if epoch is not None and epoch == self._epoch:
            self._takeover_pending = False
            self._led_epoch = epoch

    def resumes_own_epoch(self) -> bool:
        """The epoch led now directly follows this replica's previous one: nobody led in
        between (each acquisition adds one), so what it kept through an outage is still
        the truth and may be written under the new epoch."""
        return self._epoch is not None and self._continuous

    async def renew(self) -> None:
        """One acquire-or-renew; never raises (a failure is this replica not leading)."""
        if self._store is None:
            return
        sent = self._monotonic()
        try:
            lease = await self._store.lease_acquire(self.replica_id, self.ttl_s)
        except MapekError as exc:
            if self._problem is None:
                log.error("lease_renew_failed", replica=self.replica_id, error=str(exc))
            self._problem = str(exc)
            self._lapse_if_due()
            return
        if self._problem is not None:
            log.info("lease_reachable", replica=self.replica_id)
        self._problem = None
        self._lease = lease
        self._read_at = self._monotonic()
        if (
            lease.held_by(self.replica_id)
            and self._last_epoch == 0
            and (lease.acquired_at < lease.renewed_at)
        ):
            # Renewed a lease this process never held: an earlier run of this replica
            # (restarted within its TTL) held it, and a call of that run may still be in
            # flight. Let it go and take it afresh: a new epoch fences that call.
            try:
                await self._store.lease_release(self.replica_id, lease.epoch)
            except MapekError as exc:
                self._problem = str(exc)
                return
            await self.renew()
            return
        if lease.held_by(self.replica_id):
            margin = min(MAX_MARGIN_S, MARGIN_SHARE * self.ttl_s)
            self._valid_until = sent + self.ttl_s - margin
            if lease.epoch != self._epoch:
                self._gain(lease.epoch)
        else:
            self._lose(f"{lease.holder} holds the lease (epoch {lease.epoch})")

    def _gain(self, epoch: int) -> None:
        assert self._store is not None
        self._epoch = epoch
        self._store.set_fence(Fence(self.replica_id, epoch))
        # The same epoch again (its lease lapsed here only), or the very next one.
        self._continuous = self._last_epoch > 0 and epoch in (
            self._last_epoch,
            self._last_epoch + 1,
        )
        self._last_epoch = epoch
        self._takeover_pending = epoch != self._led_epoch
        log.warning("leader_elected", replica=self.replica_id, epoch=epoch)
        if self._takeover_pending and self._on_elected is not None:
            self._on_elected()  # take over at once, not at the next tick

    def _lose(self, why: str) -> None:
        if self._epoch is None:
            return
        assert self._store is not None
        log.warning("leader_lost", replica=self.replica_id, epoch=self._epoch, why=why)
        self._epoch = None
        self._led_epoch = None  # leading again, with any epoch, takes over afresh
        self._store.set_fence(Fence(self.replica_id, 0))

    def _lapse_if_due(self) -> None:
        if self._epoch is not None and self._monotonic() >= self._valid_until:
            self._lose(f"the lease could not be renewed: {self._problem}")

    async def run(self, on_elected: Callable[[], None] | None = None) -> None:
        """Renew until cancelled (a root task of the daemon; `release()` at shutdown);
        `on_elected` is called when this replica gains the lease (an iteration at once)."""
        self._on_elected = on_elected
        if self._store is None:
            return
        while True:
            await self.renew()
            await asyncio.sleep(self.next_renewal_s())
            self._lapse_if_due()

    def next_renewal_s(self) -> float:
        """Every third of the TTL; a follower also tries again just after the lease it saw
        expires, so a dead leader is replaced within its TTL, not TTL + a third."""
        period = self.ttl_s / 3
        lease = self._lease
        if self.leading() or lease is None or self._problem is not None:
            return period
        left = lease.expires_at - lease.now - (self._monotonic() - self._read_at)
        return max(EXPIRY_SLACK_S, min(period, left + EXPIRY_SLACK_S))

    async def release(self) -> None:
        """Graceful shutdown: the next replica may take over at once (best effort)."""
        if self._store is None or self._epoch is None:
            return
        epoch, self._epoch = self._epoch, None
        self._store.set_fence(Fence(self.replica_id, 0))
        try:
            released = await self._store.lease_release(self.replica_id, epoch)
        except MapekError as exc:
            log.warning("lease_release_failed", replica=self.replica_id, error=str(exc))
            return
        log.info("lease_released", replica=self.replica_id, epoch=epoch, released=released)

    def as_dict(self) -> dict[str, Any]:
        """For /stats and the console: the role, and who leads as last read."""
        lease = self._lease
        return {
            "mode": "replicas" if self._store is not None else "single",
            "replica": self.replica_id,
            "role": "leader" if self.leading() else "follower",
            "epoch": self.epoch(),
            "why": self.not_leading(),
            "lease": None
            if lease is None
            else {
                "holder": lease.holder,
                "epoch": lease.epoch,
                "expires_in_s": round(lease.expires_at - lease.now, 3),
                "ttl_s": self.ttl_s,
            },
        }
