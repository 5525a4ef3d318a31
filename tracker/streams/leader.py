"""The leader: one process at a time archives the stream and runs the rules, in id order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..alerts.monitor import MAX_ALERTS, MAX_RULES, Monitor, TooManyRules
from ..alerts.rules import Rule, parse_rule
from ..alerts.webhooks import Delivery
from ..hub import LiveHub
from ..metrics import Metrics
from ..store import SQLiteStore, WriteFailed
from .redis import RedisLog, RedisUnavailable, entry_activity
from .redis_service import RedisService

log = logging.getLogger(__name__)

LEASE_MS = 5000  # a leader that stops renewing is replaced after this long
RENEW_EVERY = 1.0
BATCH = 500


class SharedMonitor(Monitor):
    """Rules kept in Redis and run by the leader alone; alerts reach every process."""

    def __init__(
        self, service: RedisService, hub: LiveHub, metrics: Metrics, **kwargs: Any
    ) -> None:
        self.log = service.log
        self._version = -1
        self._file_rules: list[Rule] = []
        super().__init__(service, hub, metrics, **kwargs)
        service.on_alert = self.announce

    def _load(self, rules: Iterable[Rule]) -> None:
        # Nothing is evaluated where it is published: the leader evaluates, from the stream.
        self._file_rules = list(rules)

    async def start(self) -> None:
        """Share the --rules file's rules, and the newest alerts for /api/alerts."""
        for rule in self._file_rules:
            await self.log.save_rule(rule.name, rule.to_dict())
        recent = await self.log.recent_alerts(MAX_ALERTS)
        with self._lock:
            self._alerts.extend(recent)

    async def rules(self) -> list[dict[str, Any]]:
        _, bodies = await self._shared(self.log.rules_state())
        return [bodies[name] for name in sorted(bodies)]

    async def put_rule(self, rule: Rule) -> bool:
        _, bodies = await self._shared(self.log.rules_state())
        created = rule.name not in bodies
        if created and len(bodies) >= MAX_RULES:
            raise TooManyRules(f"at most {MAX_RULES} rules")
        await self._shared(self.log.save_rule(rule.name, rule.to_dict()))
        return created

    async def delete_rule(self, name: str) -> bool:
        _, bodies = await self._shared(self.log.rules_state())
        if name not in bodies:
            return False
        await self._shared(self.log.save_rule(name, None))
        self.metrics.forget_rule(name)
        return True

    async def _shared(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except RedisUnavailable as exc:
            raise WriteFailed(f"Redis did not answer ({exc})") from None

    async def deliveries(self, limit: int) -> list[dict[str, Any]]:
        """What the leaders sent: from the shared delivery log, so any process can answer."""
        return await self._shared(self.log.deliveries(limit))

    def persist_delivery(self, delivery: Delivery) -> None:
        """Share each delivery's state (and keep it with --db, for a later leader)."""
        super().persist_delivery(delivery)
        asyncio.ensure_future(self._quietly(self.log.record_delivery(delivery.to_dict())))

    @staticmethod
    async def _quietly(awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except RedisUnavailable as exc:
            log.warning("delivery state not shared: %s", exc)

    async def sync_rules(self) -> None:
        """The leader's engine follows the shared rules (a changed rule starts afresh)."""
        version, bodies = await self.log.rules_state()
        if version == self._version:
            return
        wanted = {name: parse_rule(body) for name, body in bodies.items()}
        with self._lock:
            current = {rule.name: rule for rule in self.engine.rules()}
            for name in current.keys() - wanted.keys():
                self.engine.remove_rule(name)
            for name, rule in wanted.items():
                if current.get(name) != rule:
                    self.engine.set_rule(rule)
        self._version = version


class Leader:
    """Holds a lease in Redis; while it does, works through the stream's consumer group."""

    def __init__(
        self,
        service: RedisService,
        monitor: SharedMonitor,
        *,
        archive: SQLiteStore | None = None,
        on_lead: Callable[[bool], None] | None = None,
    ) -> None:
        self.log: RedisLog = service.log
        self.service = service
        self.monitor = monitor
        self.archive = archive
        # Told True when this process starts leading, False when it stops (retention and
        # checkpoints of the --db file run on the leader only).
        self.on_lead = on_lead
        self.leading = False
        # Checked in every loop too: on Python 3.11 a cancel that meets a read timeout
        # can come back as a timeout error, which the loops would retry.
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._restored: set[str] = set()

    def start(self) -> None:
        """Try for the lease now and every second; on the IOLoop."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop leading (the lease lapses) and trying to."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopped:
            try:
                if await self.log.acquire_lease(LEASE_MS):
                    await self._lead()
            except RedisUnavailable as exc:
                log.debug("not leading: %s", exc)
            await asyncio.sleep(RENEW_EVERY)

    async def _lead(self) -> None:
        log.info("leading: archiving and running rules for %s", self.log.prefix)
        await self.log.ensure_group()
        lost = asyncio.Event()
        renewer = asyncio.ensure_future(self._keep_lease(lost))
        self._set_leading(True)
        try:
            while not lost.is_set() and not self._stopped:
                entries = await self.log.claim_pending(BATCH)
                if not entries:
                    entries = await self.log.read_group(BATCH, 1000)
                if entries:
                    await self._process(entries)
        finally:
            renewer.cancel()
            self._set_leading(False)

    def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        if leading:
            self._restore_deliveries()
        if self.on_lead is not None:
            self.on_lead(leading)

    async def _keep_lease(self, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                if not await self.log.renew_lease(LEASE_MS):
                    break
            except RedisUnavailable:
                break
        log.warning("lost the lease: another process leads now")
        lost.set()

    async def _process(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Archive, evaluate, publish the alerts and acknowledge: once, in id order."""
        entries.sort(key=lambda entry: int(entry[0].split(b"-", 1)[0]))
        activities = [entry_activity(entry_id, fields) for entry_id, fields in entries]
        done = await self.log.processed_id()
        fresh = [a for a in activities if a.id > done]
        if self.archive is not None and fresh:
            await asyncio.wrap_future(self.archive.archive(fresh))
        await self.monitor.sync_rules()
        bodies = self.monitor.evaluate(fresh)
        alerts: list[dict[str, Any]] = []
        if bodies:
            first = await self.log.alert_ids(len(bodies))
            alerts = [{"id": first + n, **body} for n, body in enumerate(bodies)]
        newest = max(done, activities[-1].id)
        await self.log.mark_processed([entry_id for entry_id, _ in entries], newest, alerts)
        for alert in alerts:
            self.monitor.fired(alert)

    def _restore_deliveries(self) -> None:
        """The leader sends webhooks: it takes over what --db kept pending."""
        dispatcher = self.monitor.dispatcher
        if dispatcher is None or self.archive is None:
            return
        rows = [
            row for row in self.archive.deliveries(MAX_ALERTS) if row["id"] not in self._restored
        ]
        self._restored.update(row["id"] for row in rows)
        dispatcher.restore(Delivery(**row) for row in rows)
