"""What the AMQP client libraries may say in our logs: nothing, unless asked for with ``--loglevel debug``.

pika, aio-pika and aiormq log every connection event themselves, at ERROR and WARNING and with tracebacks: a cut
connection used to print aio-pika's ``RobustChannel._on_close`` callback errors and aiormq's "cause reader exited
abnormally" with a traceback each (114 tracebacks for 20 cuts), a broker restart about 130 lines of pika's
connection workflow. Recovery itself was fine, and our own code says what happened, once per event, in words
a user can act on (the worker's transport: lost and why, still trying, back and after how long; a publisher: the
error it raises). So the libraries are quiet at every level but debug, where everything they say is shown,
tracebacks included. Tracebacks in our logs are then for our own bugs.

This is the one place that decides it: the worker's logging setup and the CLI both call :func:`quiet_clients`.
"""

from __future__ import annotations

import logging

#: The libraries' root loggers (every module logger of theirs is a child of one of these).
CLIENT_LOGGERS = ("pika", "aio_pika", "aiormq")


def quiet_clients(debug: bool = False) -> None:
    """The client libraries log nothing (below CRITICAL), or everything with *debug*."""
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if debug else logging.CRITICAL)
        # A child logger someone set explicitly (pika.channel was) would escape its parent's level.
        for child_name, child in list(logging.root.manager.loggerDict.items()):
            if child_name.startswith(name + ".") and isinstance(child, logging.Logger):
                child.setLevel(logging.NOTSET)


def why_closed(reason: BaseException | str) -> str:
    """A connection's close reason, as one readable phrase (pika hands over exceptions or tuples)."""
    import pika.exceptions

    if isinstance(reason, pika.exceptions.ConnectionClosedByBroker):
        return f"closed by the broker ({reason.reply_code} {reason.reply_text})"
    if isinstance(reason, pika.exceptions.AMQPHeartbeatTimeout):
        return "the broker stopped answering (no heartbeat)"
    if isinstance(reason, pika.exceptions.StreamLostError):
        return f"the connection was cut ({str(reason).removeprefix('Stream connection lost: ')})"
    return str(reason) or type(reason).__name__
