"""Which management API belongs to a broker URL, checked rather than guessed.

A broker URL names the AMQP port only. On the default port (5672, or 5671 for amqps) the management API is on
its default port of the same host. On any other port, the API on the default port most often belongs to
*another* broker (a second node, a container mapped to 5673, a tunnel): reading it would show that broker's
queues as if they were the ones asked for. So for a non-default port the API is looked for where the usual
port mappings put it (AMQP port + 10000, then the default) and accepted only when the broker it describes
has an AMQP listener on the URL's port; otherwise the error says what answered and what to set.
"""

from __future__ import annotations

import socket

from amqptasks.broker.management import ManagementClient
from amqptasks.broker.url import BrokerURL
from amqptasks.constants import MANAGEMENT_PORT, MANAGEMENT_TLS_PORT
from amqptasks.errors import ManagementAPIError

_DEFAULT_AMQP_PORTS = {"amqp": 5672, "amqps": 5671}
_AMQP_PROTOCOLS = ("amqp", "amqp/ssl")


def management_client(url: BrokerURL, management_url: str | None = None, *, timeout: float = 5.0) -> ManagementClient:
    """The management API of *url*'s broker: *management_url* when given, else derived and, off the default
    AMQP port, checked to describe that broker (raises :class:`ManagementAPIError` when none does)."""
    if management_url or url.port == _DEFAULT_AMQP_PORTS.get(url.scheme):
        return ManagementClient.for_broker(url, management_url, timeout=timeout)
    default = MANAGEMENT_TLS_PORT if url.scheme == "amqps" else MANAGEMENT_PORT
    candidates = [p for p in (url.port + 10000, default) if 0 < p < 65536]
    seen: list[str] = []
    for port in dict.fromkeys(candidates):
        base = url.management_url().rsplit(":", 1)[0] + f":{port}"
        client = ManagementClient.for_broker(url, base, timeout=timeout)
        try:
            listeners = client.overview().get("listeners") or []
        except ManagementAPIError as exc:
            seen.append(f"{base}: {'nothing answers' if exc.status is None else f'HTTP {exc.status}'}")
            continue
        ports = sorted({int(x["port"]) for x in listeners if x.get("protocol") in _AMQP_PROTOCOLS})
        if url.port in ports:
            return client
        seen.append(f"{base} belongs to the broker listening for AMQP on {', '.join(map(str, ports)) or 'no port'}")
    raise ManagementAPIError(_not_found(url, seen))


def _not_found(url: BrokerURL, seen: list[str]) -> str:
    where = f"{url.host}:{url.port}"
    try:
        socket.create_connection((url.host, url.port), timeout=3).close()
        head = f"no management API found for the broker at {where}"
    except OSError as exc:
        head = f"cannot reach the broker at {where} ({exc.strerror or exc}), and no management API for it was found"
    return (
        f"{head}:\n  " + "\n  ".join(seen) + "\n  set broker.management_url in the YAML to that broker's management API"
        " (http://HOST:PORT), or check the port in the broker URL"
    )
