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
from amqptasks.results.states import READY_STATES, REDIS_KEY_PREFIX, decode, encode

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


def key(task_id: str) -> str:
    return REDIS_KEY_PREFIX + task_id


class RedisBackend(ResultBackend):
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

    def close(self) -> None:
        self._client.close()
