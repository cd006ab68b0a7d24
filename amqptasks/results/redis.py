"""``redis://``: Celery's redis result backend, on the wire: workers write each state to the key
``celery-task-meta-<task id>`` (the JSON meta, expiring after ``results.result_expires``, Celery's
``result_expires``) and publish it on the channel of the same name, which a waiting Celery client subscribes to;
``get()`` here polls the key. So a Celery client reads our worker's results and we read a Celery worker's.
Needs the ``redis`` extra (``pip install amqptasks[redis]``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from amqptasks.errors import AmqpTasksError
from amqptasks.results.backend import OnMessage, ResultBackend
from amqptasks.results.states import READY_STATES, REDIS_GROUP_PREFIX, REDIS_KEY_PREFIX, decode, encode, loads

#: SET with expiry and PUBLISH (as Celery's ``_set``), except that a non-final state never replaces a final one:
#: a RETRY is reported after the retry message was published, so the retried run's final state can overtake it.
_STORE = """
if ARGV[2] == '0' then
  local current = redis.call('GET', KEYS[1])
  if current then
    local ok, meta = pcall(cjson.decode, current)
    local status = ok and meta['status']
    if status == 'SUCCESS' or status == 'FAILURE' or status == 'REJECTED' or status == 'REVOKED' then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


#: Celery's redis chord counting (celery/backends/redis.py ``on_chord_part_return``, ``result_chord_ordered``): each
#: member adds ``[1, id, status, result]`` to the sorted set ``<group key>.j`` (score: its group_index); the chord
#: is complete when the set holds ``<group key>.s`` (its size, set by the publisher) + ``<group key>.t`` members.
#: Unlike Celery's pipeline, one script: exactly one member sees the chord complete, and it reads and deletes it.
_CHORD_PART = """
local size = redis.call('GET', KEYS[3])
if not size then
  return false
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ready = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')
local diff = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
if ready == (tonumber(size) or 0) + diff then
  local members = redis.call('ZRANGE', KEYS[1], 0, -1)
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return members
end
return {}
"""


def key(task_id: str) -> str:
    return REDIS_KEY_PREFIX + task_id


def group_key(group_id: str, suffix: str = "") -> str:
    return REDIS_GROUP_PREFIX + group_id + suffix


class RedisBackend(ResultBackend):
    counts_chords = True

    def __init__(self, url: str, expires: int) -> None:
        try:
            import redis
        except ImportError:
            raise AmqpTasksError(
                f"results backend {url!r} needs the redis client: pip install 'amqptasks[redis]'"
            ) from None
        self.url = url
        self.expires = expires
        self._client: Any = redis.Redis.from_url(url)

    def store(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        final = "1" if meta.get("status") in READY_STATES else "0"
        self._client.eval(_STORE, 1, key(task_id), encode(meta), final, self.expires)

    async def astore(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        await asyncio.to_thread(self.store, task_id, meta, reply_to)

    def peek(self, task_id: str) -> dict[str, Any] | None:
        raw = self._client.get(key(task_id))
        return decode(raw) if raw is not None else None

    def wait(
        self, task_id: str, timeout: float | None, interval: float, on_message: OnMessage | None
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            meta = self.peek(task_id)
            if meta is not None and meta != last:
                last = meta
                if on_message is not None:
                    on_message(meta)
                if meta.get("status") in READY_STATES:
                    return meta
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id}: no result within {timeout:g} s")
            pause = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def forget(self, task_id: str) -> None:
        self._client.delete(key(task_id))

    # --- groups, saved as Celery saves them: {"result": <tuple form>} under celery-taskset-meta-<id> ---------

    def save_group(self, group_id: str, result: list[Any]) -> None:
        self._client.set(group_key(group_id), encode({"result": result}), ex=self.expires)

    def restore_group(self, group_id: str) -> list[Any] | None:
        raw = self._client.get(group_key(group_id))
        saved = loads(raw) if raw is not None else None
        return saved.get("result") if isinstance(saved, dict) else None

    def delete_group(self, group_id: str) -> None:
        self._client.delete(group_key(group_id))

    # --- chords, counted as Celery's redis backend counts them -----------------------------------------------

    def set_chord_size(self, group_id: str, size: int) -> None:
        self._client.set(group_key(group_id, ".s"), size, ex=self.expires)

    def chord_part_return(
        self, task_id: str, group_id: str, group_index: int | None, meta: dict[str, Any]
    ) -> list[tuple[str, str, Any]] | None:
        member = encode([1, task_id, meta.get("status"), meta.get("result")])
        keys = (group_key(group_id, ".j"), group_key(group_id, ".t"), group_key(group_id, ".s"))
        score = "+inf" if group_index is None else str(group_index)
        found = self._client.eval(_CHORD_PART, 3, *keys, member, score, self.expires)
        if found is None:
            return None
        parts = []
        for raw in found:
            _, member_id, status, result = loads(raw)
            parts.append((str(member_id), str(status), result))
        return parts

    def close(self) -> None:
        self._client.close()
