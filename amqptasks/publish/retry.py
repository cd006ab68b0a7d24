"""Celery's publish retry options (``retry=``, ``retry_policy=``): see :mod:`amqptasks.broker.retry`."""

from amqptasks.broker.retry import NO_RETRY, RetryPolicy, from_options, gave_up

__all__ = ["NO_RETRY", "RetryPolicy", "from_options", "gave_up"]
