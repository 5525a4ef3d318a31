"""RedisLog: the shared, ordered activity log in a Redis stream, and its keys."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..activity import Activity, ActivityInput, format_timestamp
from ..alerts.monitor import MAX_ALERTS
from ..query import last
from ..service import IdempotencyConflict

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
log = logging.getLogger(__name__)
# Idempotency keys are remembered this long (Redis keeps them; the --db file keeps its own).
KEY_TTL_S = 24 * 3600
# A write that Redis has not confirmed within this long is refused (503).
COMMAND_TIMEOUT = 2.0
TAIL_BLOCK_MS = 1000

# One script per round trip, for every request that arrived in one IOLoop turn (a group
# each), so ids, Redis's clock and the XADDs are one atomic step: id order and time order
# agree across processes. A group whose key comes back with another body adds nothing.
APPEND = """
local stream, seq, epoch_key, clock = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, key_prefix = ARGV[1], ARGV[2]
local groups = tonumber(ARGV[3])
local epoch = redis.call('GET', epoch_key)
if not epoch then
  return {'', 'no-epoch'}  -- a new log, or Redis lost it: the caller makes one first
end
local t = redis.call('TIME')
-- Microseconds as text: Lua's numbers are doubles, and print large ones in e-notation.
local now = t[1] .. string.format('%06d', tonumber(t[2]))
local last = redis.call('GET', clock) or '0'
if tonumber(now) < tonumber(last) then now = last end
redis.call('SET', clock, now)
local out = {epoch, now}
local at = 4
for g = 1, groups do
  local count = tonumber(ARGV[at])
  at = at + 1
  local conflict = false
  for i = 0, count - 1 do
    local key = ARGV[at + i * 5 + 3]
    if key ~= '' then
      local seen = redis.call('GET', key_prefix .. key)
      if seen and string.sub(seen, -40) ~= ARGV[at + i * 5 + 4] then
        out[#out + 1] = 'conflict:' .. i
        conflict = true
        break
      end
    end
  end
  if not conflict then
    out[#out + 1] = 'ok'
    for i = 0, count - 1 do
      local item = at + i * 5
      local key = ARGV[item + 3]
      local seen = false
      if key ~= '' then seen = redis.call('GET', key_prefix .. key) end
      if seen then
        out[#out + 1] = 'replay:' .. seen
      else
        local id = redis.call('INCR', seq)
        local fields = {'u', ARGV[item], 'a', ARGV[item + 1], 't', now}
        if ARGV[item + 2] ~= '' then
          fields[#fields + 1] = 'd'
          fields[#fields + 1] = string.sub(ARGV[item + 2], 2)
        end
        if key ~= '' then
          fields[#fields + 1] = 'k'
          fields[#fields + 1] = key
          redis.call('SET', key_prefix .. key, id .. ':' .. now .. ':' .. ARGV[item + 4], 'EX', ttl)
        end
        -- Untrimmed here: the leader trims what it has archived and evaluated.
        redis.call('XADD', stream, id .. '-0', unpack(fields))
        out[#out + 1] = 'new:' .. id
      end
    end
  end
  at = at + count * 5
end
return out
"""
# The log's identity, made with the log: after a loss, ids go on above the archive's.
ENSURE_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], ARGV[2])
end
return epoch
"""
# The lease is renewed, or given up, only by its holder.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisUnavailable(Exception):
    """Redis did not answer in time, or refused: nothing was confirmed."""


def unavailable(exc: BaseException) -> RedisUnavailable:
    """What clients and /readyz are told: how it failed, not where Redis lives."""
    log.debug("redis: %r", exc)
    if isinstance(exc, aioredis.TimeoutError | TimeoutError):
        return RedisUnavailable("Redis timed out")
    if isinstance(exc, aioredis.ResponseError):
        return RedisUnavailable(f"Redis refused the command: {exc}")
    return RedisUnavailable("Redis is unreachable")


class NoEpoch(Exception):
    """The log has no identity yet (new, or Redis lost it): make one, then append."""


def fingerprint(data: ActivityInput) -> str:
    """What a retried request must match: a hash of its three fields."""
    text = json.dumps([data.user_id, data.action, data.details])
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def micros_timestamp(micros: int) -> str:
    """Redis's clock (microseconds since the epoch) as an activity timestamp."""
    return format_timestamp(_EPOCH + timedelta(microseconds=micros))


def activity_id(entry_id: bytes | str) -> int:
    """The activity id of a stream entry: its entry id is "<activity id>-0"."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def entry_activity(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Activity:
    """An activity from its stream entry."""
    details = fields.get(b"d")
    key = fields.get(b"k")
    data = ActivityInput(
        fields[b"u"].decode(), fields[b"a"].decode(), None if details is None else details.decode()
    )
    return Activity.create(
        activity_id(entry_id),
        data,
        micros_timestamp(int(fields[b"t"])),
        None if key is None else key.decode(),
    )


@dataclass
class Appended:
    """What one append did: the log's identity, and each item's activity and freshness."""

    epoch: str
    activities: list[Activity]
    fresh: list[bool]


class RedisLog:
    """The keys of one log (all under one prefix) and the commands that use them."""

    def __init__(self, url: str, prefix: str = "tracker:", *, capacity: int = 1000) -> None:
        self.prefix = prefix
        self.capacity = capacity
        self.stream = prefix + "activities"
        self.alerts = prefix + "alerts"
        self.seq = prefix + "seq"
        self.epoch_key = prefix + "epoch"
        self.clock = prefix + "clock"
        self.key_prefix = prefix + "key:"
        self.rules = prefix + "rules"
        self.rules_version_key = prefix + "rules_version"
        self.alert_seq = prefix + "alert_seq"
        self.leader = prefix + "leader"
        self.processed = prefix + "processed"
        self.deliveries_log = prefix + "deliveries"
        self.group = "archive"
        # Each process is one consumer of the group: its host and pid name it.
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # No retries inside redis-py (its default backs off for seconds): the callers'
        # loops retry. Connecting (0.5 s) and answering (1.5 s) bound a write to 2 s.
        options = {
            "socket_connect_timeout": COMMAND_TIMEOUT / 4,
            "health_check_interval": 10,
            "retry": Retry(NoBackoff(), 0),
        }
        self.redis = aioredis.from_url(url, socket_timeout=COMMAND_TIMEOUT * 3 / 4, **options)
        # Blocking reads wait up to TAIL_BLOCK_MS; their socket may take a little longer.
        self.tail_redis = aioredis.from_url(
            url, socket_timeout=TAIL_BLOCK_MS / 1000 + COMMAND_TIMEOUT, **options
        )
        self._append = self.redis.register_script(APPEND)
        self._ensure_epoch = self.redis.register_script(ENSURE_EPOCH)
        self._renew = self.redis.register_script(RENEW)
        self._release = self.redis.register_script(RELEASE)

    async def close(self) -> None:
        """Close both connection pools."""
        await self.redis.aclose()
        await self.tail_redis.aclose()

    async def append(
        self, groups: Sequence[tuple[Sequence[ActivityInput], Sequence[str | None]]]
    ) -> list[Appended | IdempotencyConflict]:
        """Add each group (one request's items and keys) to the log, in one round trip.

        A group whose key came back with another body adds nothing: its IdempotencyConflict
        takes its place. NoEpoch or RedisUnavailable: nothing was added.
        """
        args: list[Any] = [KEY_TTL_S, self.key_prefix, len(groups)]
        for items, keys in groups:
            args.append(len(items))
            for data, key in zip(items, keys, strict=True):
                # details: "" for null, "=" + the text otherwise (Lua has no nil in a list)
                shown = "" if data.details is None else "=" + data.details
                args += [data.user_id, data.action, shown, key or "", fingerprint(data)]
        keys_ = [self.stream, self.seq, self.epoch_key, self.clock]
        reply = await self._call(self._append(keys=keys_, args=args))
        if reply[1] == b"no-epoch":
            raise NoEpoch()
        epoch, timestamp = reply[0].decode(), micros_timestamp(int(reply[1]))
        outcomes = iter(reply[2:])
        results: list[Appended | IdempotencyConflict] = []
        for items, keys in groups:
            status = next(outcomes).decode()
            if status.startswith("conflict:"):
                results.append(IdempotencyConflict(int(status.partition(":")[2])))
                continue
            made = [
                self._made(data, key, next(outcomes), timestamp)
                for data, key in zip(items, keys, strict=True)
            ]
            results.append(Appended(epoch, [a for a, _ in made], [fresh for _, fresh in made]))
        return results

    @staticmethod
    def _made(
        data: ActivityInput, key: str | None, outcome: bytes, timestamp: str
    ) -> tuple[Activity, bool]:
        """An item's activity, and whether it is new ("new:<id>") or its original's replay."""
        kind, _, value = outcome.decode().partition(":")
        if kind == "new":
            return Activity.create(int(value), data, timestamp, key), True
        id_, micros, _ = value.split(":")  # a replay: "<id>:<micros>:<fingerprint>"
        return Activity.create(int(id_), data, micros_timestamp(int(micros)), key), False

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (aioredis.RedisError, OSError) as exc:
            raise unavailable(exc) from None

    async def epoch(self) -> str | None:
        """The log's identity now, or None if Redis has none (it lost the log)."""
        value = await self._call(self.redis.get(self.epoch_key))
        return None if value is None else value.decode()

    async def ensure_epoch(self, floor: int) -> str:
        """The log's identity, made now if Redis has none (new, or lost)."""
        keys = [self.epoch_key, self.seq]
        value = await self._call(self._ensure_epoch(keys=keys, args=[uuid.uuid4().hex, floor]))
        return value.decode()

    async def newest(self, count: int) -> list[Activity]:
        """The newest `count` activities in the log, oldest first."""
        if count <= 0:
            return []
        entries = await self._call(self.redis.xrevrange(self.stream, count=count))
        return [entry_activity(entry_id, fields) for entry_id, fields in reversed(entries)]

    async def after(self, since: int, count: int) -> list[Activity]:
        """Up to `count` activities with ids above `since`, oldest first."""
        entries = await self._call(self.redis.xrange(self.stream, f"({since}-0", "+", count))
        return [entry_activity(entry_id, fields) for entry_id, fields in entries]

    async def oldest_id(self) -> int | None:
        """The id of the oldest activity the log still holds."""
        entries = await self._call(self.redis.xrange(self.stream, count=1))
        return activity_id(entries[0][0]) if entries else None

    async def last_id(self) -> int:
        """The newest id handed out."""
        value = await self._call(self.redis.get(self.seq))
        return int(value or 0)

    async def tail(
        self, after_activity: str, after_alert: str
    ) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
        """Block up to TAIL_BLOCK_MS for entries after these ids, in both streams."""
        streams = {self.stream: after_activity, self.alerts: after_alert}
        reply = self.tail_redis.xread(streams, count=1000, block=TAIL_BLOCK_MS)
        return await self._call(reply) or []

    # -- alerts, shared by every process -------------------------------------------------

    async def last_alert_id(self) -> str:
        """The entry id of the newest alert, so a process follows only newer ones."""
        entries = await self._call(self.redis.xrevrange(self.alerts, count=1))
        return entries[0][0].decode() if entries else "0-0"

    async def recent_alerts(self, count: int) -> list[dict[str, Any]]:
        """The newest `count` alerts, oldest first."""
        entries = await self._call(self.redis.xrevrange(self.alerts, count=count))
        return [json.loads(fields[b"alert"]) for _, fields in reversed(entries)]

    async def alert_ids(self, count: int) -> int:
        """Reserve `count` alert ids; the first of them."""
        last = await self._call(self.redis.incrby(self.alert_seq, count))
        return int(last) - count + 1

    async def rules_state(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """The rules' version and every rule's body, by name."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self.rules_version_key)
        pipe.hgetall(self.rules)
        version, bodies = await self._call(pipe.execute())
        rules = {name.decode(): json.loads(body) for name, body in bodies.items()}
        return int(version or 0), rules

    async def rules_version(self) -> int:
        """A number that changes whenever a rule does."""
        return int(await self._call(self.redis.get(self.rules_version_key)) or 0)

    async def save_rule(self, name: str, body: dict[str, Any] | None) -> None:
        """Create, replace (or with None, delete) a rule; the leader picks it up."""
        pipe = self.redis.pipeline(transaction=True)
        if body is None:
            pipe.hdel(self.rules, name)
        else:
            pipe.hset(self.rules, name, json.dumps(body))
        pipe.incr(self.rules_version_key)
        await self._call(pipe.execute())

    async def record_delivery(self, delivery: dict[str, Any]) -> None:
        """Append a webhook delivery's new state to the shared delivery log."""
        entry = {"delivery": json.dumps(delivery)}
        await self._call(self.redis.xadd(self.deliveries_log, entry, maxlen=4 * MAX_ALERTS))

    async def deliveries(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` deliveries, each in its latest state, oldest first."""
        entries = await self._call(self.redis.xrevrange(self.deliveries_log, count=4 * limit))
        latest: dict[str, dict[str, Any]] = {}
        for _, fields in entries:  # newest first: the first state seen is the latest
            state = json.loads(fields[b"delivery"])
            latest.setdefault(state["id"], state)
        ordered = sorted(latest.values(), key=lambda d: d["created_at"])
        return last(ordered, limit)

    # -- the leader: one process at a time archives and evaluates rules, in id order -------

    async def acquire_lease(self, ttl_ms: int) -> bool:
        """Become the leader if nobody is."""
        return bool(
            await self._call(self.redis.set(self.leader, self.consumer, nx=True, px=ttl_ms))
        )

    async def renew_lease(self, ttl_ms: int) -> bool:
        """Stay the leader; False if the lease was lost."""
        renewed = await self._call(self._renew(keys=[self.leader], args=[self.consumer, ttl_ms]))
        return bool(renewed)

    async def release_lease(self) -> None:
        """Stop leading now, so another process need not wait for the lease to run out."""
        await self._call(self._release(keys=[self.leader], args=[self.consumer]))

    async def ensure_group(self) -> None:
        """The archiving consumer group, from the start of the stream."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise unavailable(exc) from None
        except (aioredis.RedisError, OSError) as exc:
            raise unavailable(exc) from None

    async def claim_pending(self, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries delivered to consumers that never acknowledged them (a worker died)."""
        reply = await self._call(
            self.redis.xautoclaim(self.stream, self.group, self.consumer, 0, "0-0", count=count)
        )
        return [entry for entry in reply[1] if entry[1]]

    async def read_group(self, count: int, block_ms: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """New entries for this consumer (blocking up to block_ms)."""
        reply = await self._call(
            self.tail_redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
            )
        )
        return reply[0][1] if reply else []

    async def processed_id(self) -> int:
        """The newest activity whose rules ran (and which was archived, with --db)."""
        return int(await self._call(self.redis.get(self.processed)) or 0)

    async def mark_processed(
        self, entry_ids: list[bytes], newest: int, alerts: list[dict[str, Any]]
    ) -> None:
        """In one transaction: publish the alerts, move the mark, acknowledge, and trim."""
        pipe = self.redis.pipeline(transaction=True)
        for alert in alerts:
            pipe.xadd(self.alerts, {"alert": json.dumps(alert)}, maxlen=MAX_ALERTS)
        pipe.set(self.processed, newest)
        pipe.xack(self.stream, self.group, *entry_ids)
        # Keep at least `capacity` of the history; never what is not yet processed.
        pipe.xtrim(self.stream, minid=f"{max(newest - self.capacity + 1, 0)}-0", approximate=True)
        await self._call(pipe.execute())
