"""pika connection parameters from a ``BrokerURL``, TLS options, and a connect helper that wraps pika's errors."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pika
import pika.credentials
import pika.exceptions

from amqptasks import errors
from amqptasks.broker import pika_floats, tls_errors  # noqa: F401  (pika decodes float headers as ints without it)
from amqptasks.broker.memory import broker_for, is_memory_url
from amqptasks.broker.url import BrokerURL, auth_mechanism, query_options
from amqptasks.config.model import Broker

__all__ = ["TLSOptions", "connect", "open_blocking", "pika_parameters"]

_CONNECT_HINT = "is RabbitMQ running? set AMQPTASKS_BROKER_URL or --broker"


@dataclass(frozen=True)
class TLSOptions:
    """TLS settings for ``amqps://``. Verification is on unless ``verify=False``."""

    ca_file: str | None = None  # None: the system's trusted CAs
    cert_file: str | None = None  # client certificate (PEM), for mutual TLS
    key_file: str | None = None  # its key, when not inside cert_file
    verify: bool = True
    server_hostname: str | None = None  # SNI and the name checked in the certificate; default: the URL's host

    def __post_init__(self) -> None:
        if self.key_file and not self.cert_file:
            raise ValueError("TLS key_file given without cert_file")

    def ssl_context(self) -> ssl.SSLContext:
        try:
            # create_default_context: CERT_REQUIRED, check_hostname, modern protocol versions.
            context = ssl.create_default_context(cafile=self.ca_file)
            if not self.verify:
                context.check_hostname = False  # must be turned off before verify_mode
                context.verify_mode = ssl.CERT_NONE
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(f for f in (self.ca_file, self.cert_file, self.key_file) if f)
            raise errors.ConnectionError(f"cannot set up TLS from {files or 'the system CAs'}: {exc}") from None
        return context

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> TLSOptions:
        """TLS options from RabbitMQ's documented URI query parameters (cacertfile, certfile, keyfile,
        verify=verify_peer|verify_none, server_name_indication)."""
        verify = query.get("verify", "verify_peer")
        if verify not in ("verify_peer", "verify_none"):
            raise ValueError(f"URL query verify={verify!r}: expected verify_peer or verify_none")
        return cls(
            ca_file=query.get("cacertfile"),
            cert_file=query.get("certfile"),
            key_file=query.get("keyfile"),
            verify=verify == "verify_peer",
            server_hostname=query.get("server_name_indication"),
        )


def pika_parameters(
    url: BrokerURL,
    *,
    heartbeat: int | None = None,
    connection_name: str | None = None,
    tls: TLSOptions | None = None,
    blocked_connection_timeout: float = 30.0,
) -> pika.ConnectionParameters:
    """pika parameters for ``url``.

    Precedence: explicit keyword arguments, then the URL's query parameters, then pika's defaults. The
    exception is ``blocked_connection_timeout``, whose keyword is only a default: a value in the URL wins.
    ``amqps://`` always gets TLS, verifying against the system CAs unless ``tls`` (or the URL query) says
    otherwise.
    """
    options = query_options(url)
    options.setdefault("blocked_connection_timeout", blocked_connection_timeout)
    if heartbeat is not None:
        options["heartbeat"] = heartbeat
    if connection_name is not None:
        # Shown as the connection's name in the management UI and `rabbitmqctl list_connections`.
        options["client_properties"] = {"connection_name": connection_name}
    if url.scheme == "amqps":
        tls = tls or TLSOptions.from_query(url.query)
        options["ssl_options"] = pika.SSLOptions(tls.ssl_context(), tls.server_hostname or url.host)
    elif tls is not None:
        raise ValueError(f"TLS options given for {url.masked()}: use an amqps:// URL to connect with TLS")
    credentials: object = pika.PlainCredentials(url.username, url.password)
    if auth_mechanism(url) == "external":  # the client certificate is the login
        credentials = pika.credentials.ExternalCredentials()
    return pika.ConnectionParameters(
        host=url.host, port=url.port, virtual_host=url.vhost, credentials=credentials, **options
    )


def open_blocking(
    url: BrokerURL,
    *,
    heartbeat: int | None = None,
    connection_name: str | None = None,
    tls: TLSOptions | None = None,
    blocked_connection_timeout: float = 30.0,
) -> pika.BlockingConnection:
    """Connect to ``url``; any failure becomes ``amqptasks.errors.ConnectionError`` naming the masked URL.

    A URL with several nodes (``amqp://h1;amqp://h2``) connects to the first of them that answers, in order.
    """
    try:
        parameters = [
            pika_parameters(
                node,
                heartbeat=heartbeat,
                connection_name=connection_name,
                tls=tls,
                blocked_connection_timeout=blocked_connection_timeout,
            )
            for node in url.nodes()
        ]
    except ValueError as exc:  # a bad URL query parameter, or TLS options for an amqp:// URL
        raise errors.ConnectionError(str(exc)) from None
    try:
        return pika.BlockingConnection(parameters if len(parameters) > 1 else parameters[0])
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise connect_error(url, exc) from None


def connect(broker: Broker, name: str, *, heartbeat: int | None = None) -> Any:
    """A blocking connection to the YAML's broker named *name* in the management UI: pika's for amqp(s)://,
    the in-process broker's (pika's shapes and exceptions) for memory://."""
    if is_memory_url(broker.url):
        from amqptasks.broker.memory.blocking import BlockingConnection

        return BlockingConnection(broker_for(broker.url))
    url = BrokerURL.parse(broker.url)
    beat = broker.heartbeat if heartbeat is None else heartbeat
    return open_blocking(url, heartbeat=beat, connection_name=name, tls=tls_options(broker))


def connect_error(url: BrokerURL, exc: BaseException) -> errors.ConnectionError:
    """Why connecting to *url* failed, for a user: the masked URL, the cause, what to check."""
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return errors.ConnectionError(
            f"cannot connect to {url.masked()}: authentication failed (check the user and password)"
        )
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return errors.ConnectionError(
            f"cannot connect to {url.masked()}: access to vhost {url.vhost!r} refused "
            f"(does it exist, and does user {url.username!r} have permissions on it?)"
        )
    cause = _innermost(exc)
    if isinstance(cause, ssl.SSLError):  # a certificate problem, not a broker that is down
        return errors.ConnectionError(f"cannot connect to {url.masked()}: {tls_errors.explain(cause)}")
    return errors.ConnectionError(f"cannot connect to {url.masked()}: {_describe(cause)} ({_CONNECT_HINT})")


def _innermost(exc: BaseException) -> BaseException:
    # pika nests the cause: AMQPConnectionError(AMQPConnectorSocketConnectError(ConnectionRefusedError(...))).
    for _ in range(5):
        inner = getattr(exc, "exception", None) or (exc.args[0] if exc.args else None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, pika.exceptions.IncompatibleProtocolError):
        return "the server did not speak AMQP 0-9-1 (wrong port?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def tls_options(broker: Broker) -> TLSOptions | None:
    """The YAML's TLS options; only for amqps:// URLs (validate warns that amqp:// ignores them)."""
    tls = broker.tls
    if tls is None or BrokerURL.parse(broker.url).scheme != "amqps":
        return None
    return TLSOptions(tls.ca_file, tls.cert_file, tls.key_file, tls.verify, tls.server_hostname)
