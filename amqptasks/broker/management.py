"""A small client for the RabbitMQ management HTTP API (stdlib ``urllib`` only).

Every error becomes ``ManagementAPIError``; messages name the method and URL path, never the password.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from amqptasks.broker.url import BrokerURL, mask_url
from amqptasks.errors import ManagementAPIError

__all__ = ["ManagementClient"]

_PLUGIN_HINT = "is the management plugin enabled? rabbitmq-plugins enable rabbitmq_management"
_STATUS_HINTS = {
    401: "check the user and password of the broker URL",
    403: "the user needs the 'management' or 'administrator' tag and permissions on the vhost",
}


def _seg(name: str) -> str:
    # Names may hold '/', '#', '?' or '%': encode everything, so the default vhost "/" becomes %2F.
    return quote(name, safe="")


class ManagementClient:
    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"management URL {mask_url(base_url)!r} must look like http://host:15672")
        # Credentials never travel inside the URL we keep (it shows up in error messages).
        netloc = parts.netloc.rpartition("@")[2]
        self.base_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.timeout = timeout
        self._ssl_context = ssl_context
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._auth_header = f"Basic {token}"

    @classmethod
    def for_broker(cls, url: BrokerURL, management_url: str | None = None, *, timeout: float = 5.0) -> ManagementClient:
        """A client for ``url``'s broker: ``management_url`` if given, else derived from the AMQP URL.

        Credentials come from the AMQP URL unless ``management_url`` carries its own.
        """
        base = management_url or url.management_url()
        parts = urlsplit(base)
        username, password = url.username, url.password
        if parts.username is not None:
            username, password = unquote(parts.username), unquote(parts.password or "")
        return cls(base, username, password, timeout=timeout)

    def __repr__(self) -> str:
        return f"ManagementClient({self.base_url!r})"

    # -- broker -------------------------------------------------------------------------------------------
    def is_reachable(self) -> bool:
        """True when the API answers and accepts our credentials."""
        try:
            self.overview()
        except ManagementAPIError:
            return False
        return True

    def overview(self) -> dict[str, Any]:
        return self._json_object("GET", "/api/overview")

    def rabbitmq_version(self) -> str:
        return str(self.overview()["rabbitmq_version"])

    # -- vhost contents -----------------------------------------------------------------------------------
    def list_exchanges(self, vhost: str) -> list[dict[str, Any]]:
        return self._json_list("GET", f"/api/exchanges/{_seg(vhost)}")

    def list_queues(self, vhost: str) -> list[dict[str, Any]]:
        return self._json_list("GET", f"/api/queues/{_seg(vhost)}")

    def get_queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        """The queue, or None when it (or its vhost) does not exist."""
        try:
            return self._json_object("GET", f"/api/queues/{_seg(vhost)}/{_seg(name)}")
        except ManagementAPIError as exc:
            if exc.status == 404:
                return None
            raise

    def list_bindings(self, vhost: str) -> list[dict[str, Any]]:
        return self._json_list("GET", f"/api/bindings/{_seg(vhost)}")

    # -- vhosts and permissions ---------------------------------------------------------------------------
    def create_vhost(self, name: str) -> None:
        """Create ``name``; an existing vhost is left as it is."""
        self._request("PUT", f"/api/vhosts/{_seg(name)}", {})

    def delete_vhost(self, name: str) -> None:
        """Delete ``name`` and everything in it; a missing vhost is fine."""
        try:
            self._request("DELETE", f"/api/vhosts/{_seg(name)}")
        except ManagementAPIError as exc:
            if exc.status != 404:
                raise

    def set_permissions(
        self, vhost: str, user: str, configure: str = ".*", write: str = ".*", read: str = ".*"
    ) -> None:
        body = {"configure": configure, "write": write, "read": read}
        self._request("PUT", f"/api/permissions/{_seg(vhost)}/{_seg(user)}", body)

    # -- definitions --------------------------------------------------------------------------------------
    def import_definitions(self, vhost: str, definitions: dict[str, Any]) -> None:
        """Merge ``definitions`` (queues, exchanges, bindings, policies...) into ``vhost``."""
        self._request("POST", f"/api/definitions/{_seg(vhost)}", definitions)

    def export_definitions(self, vhost: str) -> dict[str, Any]:
        return self._json_object("GET", f"/api/definitions/{_seg(vhost)}")

    # -- connections --------------------------------------------------------------------------------------
    def list_connections(self) -> list[dict[str, Any]]:
        """Open client connections. The list comes from the stats database, so it lags by up to a second."""
        return self._json_list("GET", "/api/connections")

    def list_channels(self, vhost: str) -> list[dict[str, Any]]:
        """Open channels in *vhost*, with their prefetch (``prefetch_count``, ``global_prefetch_count``)."""
        return self._json_list("GET", f"/api/vhosts/{_seg(vhost)}/channels")

    def close_connection(self, name: str, reason: str = "closed by amqptasks") -> None:
        """Force-close a client connection by its management ``name`` (e.g. "127.0.0.1:50000 -> ...")."""
        # HTTP header values are latin-1: degrade other characters rather than fail to close.
        header = reason.encode("latin-1", "replace").decode("latin-1")
        self._request("DELETE", f"/api/connections/{_seg(name)}", headers={"X-Reason": header})

    # -- transport ----------------------------------------------------------------------------------------
    def _json_object(self, method: str, path: str) -> dict[str, Any]:
        data = self._request(method, path)
        if not isinstance(data, dict):
            raise ManagementAPIError(f"{method} {self.base_url}{path}: expected a JSON object in the answer")
        return cast(dict[str, Any], data)

    def _json_list(self, method: str, path: str) -> list[dict[str, Any]]:
        data = self._request(method, path)
        if not isinstance(data, list):
            raise ManagementAPIError(f"{method} {self.base_url}{path}: expected a JSON list in the answer")
        return cast(list[dict[str, Any]], data)

    def _request(self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None) -> Any:
        where = f"{method} {self.base_url}{path}"
        request = urllib.request.Request(self.base_url + path, method=method)
        request.add_header("Authorization", self._auth_header)
        request.add_header("Accept", "application/json")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl_context) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise ManagementAPIError(f"{where} failed: HTTP {exc.code} {_reason(exc)}", exc.code) from None
        except urllib.error.URLError as exc:
            raise ManagementAPIError(f"{where} failed: {_describe(exc.reason)} ({_PLUGIN_HINT})") from None
        except OSError as exc:  # timeouts and resets while reading the answer
            raise ManagementAPIError(f"{where} failed: {_describe(exc)} ({_PLUGIN_HINT})") from None
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise ManagementAPIError(f"{where}: the answer is not JSON (is this really the management API?)") from None


def _reason(exc: urllib.error.HTTPError) -> str:
    """The API's own explanation: its JSON ``reason`` (and ``error``) when present."""
    try:
        detail = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    parts = [str(p) for p in (detail.get("error"), detail.get("reason")) if p]
    text = ": ".join(dict.fromkeys(parts)) or str(exc.reason)
    hint = _STATUS_HINTS.get(exc.code)
    return f"({text}; {hint})" if hint else f"({text})"


def _describe(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)
