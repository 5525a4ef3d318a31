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
from ..store import WriteFailed
from .redis import RedisLog, RedisUnavailable, activity_id, entry_activity
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
        self.redis_log = service.redis_log
        self._version = -1
        self._file_rules: list[Rule] = []
        self._sharing: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        super().__init__(service, hub, metrics, **kwargs)
        service.on_alert = self.announce

    def _load(self, rules: Iterable[Rule]) -> None:
        # Nothing is evaluated where it is published: the leader evaluates, from the stream.
        self._file_rules = list(rules)

    async def start(self) -> None:
        """Share the --rules file's rules and read the newest alerts, once Redis answers."""
        self._sharing = asyncio.ensure_future(self._share())

    async def _share(self) -> None:
        while True:
            try:
                for rule in self._file_rules:
                    await self.redis_log.save_rule(rule.name, rule.to_dict())
                recent = await self.redis_log.recent_alerts(MAX_ALERTS)
            except RedisUnavailable:
                await asyncio.sleep(RENEW_EVERY)  # the follower reports the outage
                continue
            with self._lock:
                # Alerts heard meanwhile may be among them: by id, once each, in order.
                merged = {alert["id"]: alert for alert in [*recent, *self._alerts]}
                self._alerts.clear()
                self._alerts.extend(merged[key] for key in sorted(merged))
            return

    async def rules(self) -> list[dict[str, Any]]:
        _, bodies = await self._shared(self.redis_log.rules_state())
        return [bodies[name] for name in sorted(bodies)]

    async def put_rule(self, rule: Rule) -> bool:
        _, bodies = await self._shared(self.redis_log.rules_state())
        created = rule.name not in bodies
        if created and len(bodies) >= MAX_RULES:
            raise TooManyRules(f"at most {MAX_RULES} rules")
        await self._shared(self.redis_log.save_rule(rule.name, rule.to_dict()))
        return created

    async def delete_rule(self, name: str) -> bool:
        _, bodies = await self._shared(self.redis_log.rules_state())
        if name not in bodies:
            return False
        await self._shared(self.redis_log.save_rule(name, None))
        return True

    async def _shared(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except RedisUnavailable as exc:
            raise WriteFailed(f"Redis did not answer ({exc})") from None

    async def deliveries(self, limit: int) -> list[dict[str, Any]]:
        """What the leaders sent: from the shared delivery log, so any process can answer."""
        return await self._shared(self.redis_log.deliveries(limit))

    def persist_delivery(self, delivery: Delivery) -> None:
        """Share each delivery's state (and keep it with --db, for a later leader)."""
        super().persist_delivery(delivery)
        task = asyncio.ensure_future(
            self._quietly(self.redis_log.record_delivery(delivery.to_dict()))
        )
        self._writes.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._writes.discard)

    @staticmethod
    async def _quietly(awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except RedisUnavailable as exc:
            log.warning("delivery state not shared: %s", exc)

    async def sync_rules(self) -> None:
        """The leader's engine follows the shared rules (a changed rule starts afresh)."""
        # Before each batch, so a rule put on any process applies to what follows it.
        if await self.redis_log.rules_version() == self._version:
            return
        version, bodies = await self.redis_log.rules_state()
        if version == self._version:
            return
        wanted = {name: parse_rule(body) for name, body in bodies.items()}
        with self._lock:
            current = {rule.name: rule for rule in self.engine.rules()}
            gone = current.keys() - wanted.keys()
            changed = [rule for name, rule in wanted.items() if current.get(name) != rule]
            self.engine.change_rules(changed, gone)  # indexed once, however many changed
            for name in gone:
                self.metrics.forget_rule(name)  # its series lives where it fired: here
        self._version = version


class Leader:
    """Holds a lease in Redis; while it does, works through the stream's consumer group."""

    def __init__(
        self,
        service: RedisService,
        monitor: SharedMonitor,
        *,
        on_lead: Callable[[bool], None] | None = None,
    ) -> None:
        self.redis_log: RedisLog = service.redis_log
        self.service = service
        self.monitor = monitor
        # With --db: the file every activity is archived to (it serves history queries).
        self.archive = service.store
        # Told True when this process starts leading, False when it stops (retention and
        # checkpoints of the --db file run on the leader only).
        self.on_lead = on_lead
        # Checked in every loop too: on Python 3.11 a cancel that meets a read timeout
        # can come back as a timeout error, which the loops would retry.
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._restored: set[str] = set()

    def start(self) -> None:
        """Try for the lease now and every second; on the IOLoop."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop leading and trying to; another process takes over at once."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self._give_up()

    async def _run(self) -> None:
        while not self._stopped:
            try:
                if await self.redis_log.acquire_lease(LEASE_MS):
                    await self._lead()
            except RedisUnavailable as exc:
                log.debug("not leading: %s", exc)
            except Exception:  # noqa: BLE001 - the work must go on, here or elsewhere
                # Say so, and let another process (or this one, later) take over.
                log.exception("leading failed; giving up the lease")
                await self._give_up()
            await asyncio.sleep(RENEW_EVERY)

    async def _give_up(self) -> None:
        try:
            await self.redis_log.release_lease()
        except RedisUnavailable:
            pass  # it runs out by itself

    async def _lead(self) -> None:
        log.info("leading: archiving and running rules for %s", self.redis_log.prefix)
        await self.redis_log.ensure_group()
        lost = asyncio.Event()
        renewer = asyncio.ensure_future(self._keep_lease(lost))
        self._set_leading(True)
        await self._restore_deliveries()
        try:
            # First what a leader before took and did not finish, then what comes.
            done = await self._take_over(await self.redis_log.processed_id(), lost)
            while not lost.is_set() and not self._stopped:
                entries = await self.redis_log.read_group(BATCH, 1000)
                if not entries or activity_id(entries[0][0]) > done + 1:
                    # Idle, or ids skipped: a leader deposed mid-read may hold entries
                    # unacknowledged. Take them first, so everything goes in id order.
                    done = await self._take_over(done, lost)
                if entries:
                    done = await self._process(entries, done)
        finally:
            renewer.cancel()
            self._set_leading(False)

    async def _take_over(self, done: int, lost: asyncio.Event) -> int:
        """Process what other consumers were given and never acknowledged, in id order."""
        while not lost.is_set() and not self._stopped:
            entries = await self.redis_log.claim_pending(BATCH)
            if not entries:
                break
            done = await self._process(entries, done)
        return done

    def _set_leading(self, leading: bool) -> None:
        if self.on_lead is not None:
            self.on_lead(leading)

    async def _keep_lease(self, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                if not await self.redis_log.renew_lease(LEASE_MS):
                    break
            except RedisUnavailable:
                break
        log.warning("lost the lease: another process leads now")
        lost.set()

    async def _process(self, entries: list[tuple[bytes, dict[bytes, bytes]]], done: int) -> int:
        """Archive, evaluate, publish the alerts and acknowledge: once, in id order."""
        # `done`: the newest id processed, by this leader or one before (the mark in Redis).
        entries.sort(key=lambda entry: activity_id(entry[0]))
        activities = [entry_activity(entry_id, fields) for entry_id, fields in entries]
        fresh = [a for a in activities if a.id > done]
        if self.archive is not None and fresh:
            await asyncio.wrap_future(self.archive.archive(fresh))
        await self.monitor.sync_rules()
        bodies = self.monitor.evaluate(fresh)
        alerts: list[dict[str, Any]] = []
        if bodies:
            first = await self.redis_log.alert_ids(len(bodies))
            alerts = [{"id": first + n, **body} for n, body in enumerate(bodies)]
        newest = max(done, activities[-1].id)
        await self.redis_log.mark_processed([entry_id for entry_id, _ in entries], newest, alerts)
        for alert in alerts:
            self.monitor.fired(alert)
        return newest

    async def _restore_deliveries(self) -> None:
        """The leader sends webhooks: it takes over what --db kept pending."""
        dispatcher = self.monitor.dispatcher
        if dispatcher is None or self.archive is None:
            return
        kept = await asyncio.to_thread(self.archive.deliveries, MAX_ALERTS)
        rows = [row for row in kept if row["id"] not in self._restored]
        self._restored.update(row["id"] for row in rows)
        dispatcher.restore(Delivery(**row) for row in rows)
