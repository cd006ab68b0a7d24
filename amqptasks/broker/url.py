"""Broker URLs (RabbitMQ URI spec) and password masking. Pure: no I/O, no pika.

Spec: https://www.rabbitmq.com/docs/uri-spec -- ``amqp[s]://user:pass@host:port/vhost?query``, where the vhost is
the single path segment, percent-decoded.

A cluster is several URLs separated by ``;``, as Celery writes them: ``amqp://u:p@h1/v;amqp://h2;amqp://h3``.
The first is the :class:`BrokerURL` itself, the others its ``alternates``; one that gives no user (no ``@``) takes
the first's user and password, one that gives no vhost and no query takes the first's. Connecting tries the
nodes in turn (``nodes()``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from amqptasks.constants import MANAGEMENT_PORT, MANAGEMENT_TLS_PORT

__all__ = ["BrokerURL", "auth_mechanism", "mask_url", "query_options"]

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_DEFAULT_HOST = "localhost"
_DEFAULT_CREDENTIAL = "guest"
_DEFAULT_VHOST = "/"
_MASK = "****"
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_SHAPE = "expected amqp://user:password@host:port/vhost"
#: Between the URLs of a cluster's nodes: a ';' that a scheme follows (a ';' elsewhere is part of one URL).
_NODE_SEPARATOR = re.compile(r";(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")


@dataclass(frozen=True, repr=False)
class BrokerURL:
    """A parsed ``amqp://`` or ``amqps://`` URL. ``repr()`` and ``str()`` never show the password."""

    scheme: str
    host: str
    port: int
    username: str
    password: str
    vhost: str
    # Not hashed: a mapping is unhashable; equal URLs still hash equally through the other fields.
    query: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: The cluster's other nodes, for failover (``amqp://h1;amqp://h2``); empty for one node.
    alternates: tuple[BrokerURL, ...] = ()

    def __post_init__(self) -> None:
        if self.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"unsupported broker URL scheme {self.scheme!r}: expected 'amqp' or 'amqps'")
        if not 0 < self.port < 65536:
            raise ValueError(f"broker port {self.port} is out of range 1-65535")
        # Copy so the caller's dict cannot mutate a frozen URL behind its back.
        object.__setattr__(self, "query", MappingProxyType(dict(self.query)))

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """Parse ``url`` (one node, or several separated by ``;``); ``ValueError`` (never showing the password)
        when it is not a valid broker URL."""
        if not isinstance(url, str):
            raise ValueError(f"broker URL must be a string, not {type(url).__name__}")
        pieces = [p.strip() for p in _NODE_SEPARATOR.split(url.strip())]
        if len(pieces) == 1:
            return cls._parse_node(pieces[0])
        if not all(pieces):
            raise ValueError(f"broker URL {mask_url(url)}: an empty node between ';' separators")
        first = cls._parse_node(pieces[0])
        return dataclasses.replace(first, alternates=tuple(first._alternate(p) for p in pieces[1:]))

    def _alternate(self, text: str) -> BrokerURL:
        node = self._parse_node(text)
        rest = text.partition("://")[2]
        authority, remainder = rest[: _authority_end(rest)], rest[_authority_end(rest) :]
        if "@" not in authority:
            node = dataclasses.replace(node, username=self.username, password=self.password)
        if remainder in ("", "/"):
            node = dataclasses.replace(node, vhost=self.vhost, query=self.query)
        if node.scheme != self.scheme:
            raise ValueError(f"broker URL {node.masked()}: every node of a cluster has the same scheme ({self.scheme})")
        return node

    def nodes(self) -> tuple[BrokerURL, ...]:
        """Every node, this one first, each without alternates: what connecting tries in turn."""
        return (dataclasses.replace(self, alternates=()), *self.alternates)

    @classmethod
    def _parse_node(cls, url: str) -> BrokerURL:
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError(f"broker URL must start with amqp:// or amqps:// ({_SHAPE})")
        if scheme.lower() not in _DEFAULT_PORTS:
            shown = repr(scheme) if _SCHEME_RE.fullmatch(scheme) else "(unreadable)"
            raise ValueError(f"unsupported broker URL scheme {shown}: expected amqp:// or amqps://")
        scheme = scheme.lower()

        end = _authority_end(rest)
        authority, remainder = rest[:end], rest[end:]
        if "@" not in authority and "@" in remainder and ":" in authority:
            # Most likely a password holding an unencoded '/', '?' or '#' that cut the authority short; any
            # detail we could show (the "port", the "vhost") would be a piece of that password.
            raise ValueError(
                "cannot parse the broker URL: the password seems to contain an unencoded '/', '?' or '#' "
                "(percent-encode it, e.g. urllib.parse.quote(password, safe='')); "
                "an '@' in the vhost must be written %40"
            )
        shown = mask_url(url)  # safe from here on: any password sits before the last '@'

        userinfo, at, hostport = authority.rpartition("@")
        username = password = _DEFAULT_CREDENTIAL
        if at:
            user_part, colon, pass_part = userinfo.partition(":")
            username = unquote(user_part)
            if colon:
                password = unquote(pass_part)

        if ";" in hostport:
            raise ValueError(
                f"broker URL {shown}: to give several nodes, separate whole URLs with ';' (amqp://h1;amqp://h2)"
            )
        host, port = _split_hostport(hostport, scheme, shown)

        path, _, query_string = remainder.partition("?")
        if "#" in query_string or "#" in path:
            raise ValueError(f"broker URL {shown} has a '#fragment', which means nothing for AMQP")
        if path.count("/") > 1:
            raise ValueError(
                f"broker URL {shown}: the vhost must be a single path segment; write a '/' inside the vhost name as %2F"
            )
        # The spec distinguishes an absent vhost ("amqp://host") from an empty one ("amqp://host/" -> "").
        # We map both to RabbitMQ's default vhost "/", like pika and the Java client do: a vhost named ""
        # cannot even be addressed through the management HTTP API, so it is never what the user meant.
        vhost = unquote(path[1:]) or _DEFAULT_VHOST
        return cls(
            scheme=scheme,
            host=host,
            port=port,
            username=username,
            password=password,
            vhost=vhost,
            query=_parse_query(query_string, shown),
        )

    def to_url(self) -> str:
        """The full URL (every node), passwords included; ``parse(u.to_url()) == u``."""
        return ";".join(n._format(quote(n.password, safe="")) for n in self.nodes())

    def masked(self) -> str:
        """The URL with the password replaced by ``****``: safe for logs and error messages."""
        return ";".join(n._format(_MASK) for n in self.nodes())

    def with_vhost(self, vhost: str) -> BrokerURL:
        """The same node(s), on another vhost."""
        alternates = tuple(dataclasses.replace(n, vhost=vhost) for n in self.alternates)
        return dataclasses.replace(self, vhost=vhost, alternates=alternates)

    def management_url(self) -> str:
        """Base URL of the management HTTP API on the same host (default ports; no credentials)."""
        if self.scheme == "amqps":
            return f"https://{_format_host(self.host)}:{MANAGEMENT_TLS_PORT}"
        return f"http://{_format_host(self.host)}:{MANAGEMENT_PORT}"

    def _format(self, password: str) -> str:
        query = f"?{urlencode(list(self.query.items()))}" if self.query else ""
        return (
            f"{self.scheme}://{quote(self.username, safe='')}:{password}@{_format_host(self.host)}:{self.port}"
            f"/{quote(self.vhost, safe='')}{query}"
        )

    def __repr__(self) -> str:
        return f"BrokerURL({self.masked()!r})"

    def __str__(self) -> str:
        return self.masked()


def _authority_end(rest: str) -> int:
    positions = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return min(positions, default=len(rest))


def _split_hostport(hostport: str, scheme: str, shown: str) -> tuple[str, int]:
    if hostport.startswith("["):  # IPv6 literal: amqp://[::1]:5672
        close = hostport.find("]")
        if close < 0:
            raise ValueError(f"broker URL {shown}: unterminated IPv6 address (missing ']')")
        host, port_text = hostport[1:close], hostport[close + 1 :]
        if port_text and not port_text.startswith(":"):
            raise ValueError(f"broker URL {shown}: unexpected text after the IPv6 address")
        port_text = port_text[1:]
    else:
        host_part, _, port_text = hostport.partition(":")
        host = unquote(host_part)
    if not port_text:  # absent (or empty, "host:") port: the scheme's IANA port, per the spec
        port = _DEFAULT_PORTS[scheme]
    elif port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise ValueError(f"broker URL {shown}: invalid port {port_text!r} (expected a number 1-65535)")
    return host or _DEFAULT_HOST, port


def _parse_query(query_string: str, shown: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        if key in query:
            raise ValueError(f"broker URL {shown}: query parameter {key!r} is given more than once")
        query[key] = value
    return query


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``****``; works on any scheme and never raises.

    Errs on the side of hiding too much: the password is taken to run up to the *last* '@', so a password
    holding an unencoded '/', '@' or '#' is still hidden (an '@' later in the path or query may then hide
    the host too).
    """
    try:
        text = str(url)
        nodes = _NODE_SEPARATOR.split(text)
        if len(nodes) > 1:  # a cluster: each node's own password
            return ";".join(mask_url(node) for node in nodes)
        start = text.find("://")
        if start <= 0:
            return text
        start += 3
        at = text.rfind("@", start)
        if at < 0:
            return text
        username, colon, password = text[start:at].partition(":")
        if not colon or not password or any(c in username for c in "/?#"):
            return text
        return f"{text[:start]}{username}:{_MASK}{text[at:]}"
    except Exception:  # pragma: no cover - defensive: a masking helper must never mask the real error
        return "<unprintable URL>"


# URL query parameter -> (pika ConnectionParameters keyword, conversion).
_QUERY_OPTIONS: dict[str, tuple[str, Any]] = {
    "heartbeat": ("heartbeat", int),
    "channel_max": ("channel_max", int),
    "frame_max": ("frame_max", int),
    "connection_attempts": ("connection_attempts", int),
    "retry_delay": ("retry_delay", float),
    "socket_timeout": ("socket_timeout", float),
    # RabbitMQ's own name (URI query parameters guide) is in milliseconds.
    "connection_timeout": ("socket_timeout", lambda ms: int(ms) / 1000),
    "stack_timeout": ("stack_timeout", float),
    "blocked_connection_timeout": ("blocked_connection_timeout", float),
    "locale": ("locale", str),
}
_TLS_QUERY = frozenset({"cacertfile", "certfile", "keyfile", "verify", "server_name_indication"})
#: RabbitMQ's URI query parameter for the SASL mechanism: EXTERNAL logs in with the TLS client certificate
#: (the rabbitmq_auth_mechanism_ssl plugin); the URL's user and password are then not sent.
_AUTH_MECHANISMS = ("plain", "external")


def query_options(url: BrokerURL) -> dict[str, Any]:
    """The URL's query as pika connection options; ``ValueError`` names an unknown or invalid one."""
    options: dict[str, Any] = {}
    verify = url.query.get("verify", "verify_peer")
    if verify not in ("verify_peer", "verify_none"):
        raise ValueError(f"broker URL {url.masked()}: verify={verify!r}: expected verify_peer or verify_none")
    auth_mechanism(url)
    for key, value in url.query.items():
        if key in _TLS_QUERY or key == "auth_mechanism":
            continue
        if key not in _QUERY_OPTIONS:
            known = ", ".join(sorted([*_QUERY_OPTIONS, *_TLS_QUERY, "auth_mechanism"]))
            raise ValueError(f"broker URL {url.masked()}: unknown query parameter {key!r} (known: {known})")
        name, convert = _QUERY_OPTIONS[key]
        try:
            options[name] = convert(value)
        except ValueError:
            raise ValueError(f"broker URL {url.masked()}: invalid value {value!r} for {key!r}") from None
    return options


def auth_mechanism(url: BrokerURL) -> str:
    """``"plain"`` (user and password) or ``"external"`` (the TLS client certificate), from ``?auth_mechanism=``."""
    mechanism = url.query.get("auth_mechanism", "plain").lower()
    if mechanism not in _AUTH_MECHANISMS:
        raise ValueError(
            f"broker URL {url.masked()}: auth_mechanism={mechanism!r}: expected plain or external "
            "(external: log in with the TLS client certificate, over amqps://)"
        )
    if mechanism == "external" and url.scheme != "amqps":
        raise ValueError(f"broker URL {url.masked()}: auth_mechanism=external needs amqps:// (a client certificate)")
    return mechanism
