"""Delays and retries on the broker: countdown/eta and retry backoff without a relay process."""

from amqptasks.delays.tiers import LEVELS, MAX_DELAY_MS, DelayRoute, route, tier_topology

__all__ = ["LEVELS", "MAX_DELAY_MS", "DelayRoute", "route", "tier_topology"]
