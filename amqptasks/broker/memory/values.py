"""AMQP field values as RabbitMQ sees them: their type names and when two are equal (pure).

A client sends Python values encoded with a type tag (pika: ``str`` as longstr, ``int`` as signedint or long...).
RabbitMQ compares declaration arguments by type class and value, and names the types in its errors.
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any

__all__ = ["describe", "equivalent", "shown", "type_name"]


def type_name(value: Any) -> str:
    """The AMQP type a client (pika) encodes *value* as."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, bytes | bytearray):
        return "binary"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    return "void"


def _type_class(value: Any) -> str:
    name = type_name(value)
    return "int" if name in ("signedint", "long") else name


def equivalent(a: Any, b: Any) -> bool:
    """RabbitMQ's test for a declaration argument: same type class and equal value."""
    return _type_class(a) == _type_class(b) and a == b


def shown(value: Any) -> str:
    """A value as RabbitMQ's error texts print it (``'1000'``, ``'true'``)."""
    if isinstance(value, bool):
        return f"'{str(value).lower()}'"
    if isinstance(value, bytes):
        return f"'{value.decode(errors='replace')}'"
    return f"'{value}'"


def describe(value: Any) -> str:
    """An argument with its type, or ``none`` for a missing one, as in ``received none but current is ...``."""
    if value is None:
        return "none"
    return f"the value {shown(value)} of type '{type_name(value)}'"
