"""Scenarios run against both memory:// and a real RabbitMQ (see tests/test_memory_differential.py)."""
