"""A private RabbitMQ cluster for tests: three nodes (tests/broker_node.py) joined with ``rabbitmqctl join_cluster``.

Each node has its own name, ports and data directory; they share one Erlang cookie. The shared broker is never
part of it. ``url`` names every node (``amqp://...:p1/%2F;amqp://...:p2/%2F;...``), as a user gives a cluster.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.broker_node import ENV_SBIN, BrokerNode, _ci, rabbitmq_sbin


class Cluster:
    def __init__(self, nodes: list[BrokerNode]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        return ";".join(node.url for node in self.nodes)

    def node_named(self, name: str) -> BrokerNode:
        return next(node for node in self.nodes if node.name == name)

    def running(self) -> list[BrokerNode]:
        return [node for node in self.nodes if node._process is not None and node._process.poll() is None]

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl ARGS`` on the first running node."""
        return self.running()[0].ctl(*args)

    def leader(self, queue: str) -> BrokerNode:
        """The node holding *queue*'s quorum leader (polls while an election is going on)."""
        deadline = time.monotonic() + 30
        while True:
            out = self.ctl("list_queues", "--quiet", "--no-table-headers", "name", "leader")
            for line in out.splitlines():
                name, _, leader = line.partition("\t")
                if name == queue and leader.strip() in {n.name for n in self.running()}:
                    return self.node_named(leader.strip())
            if time.monotonic() > deadline:
                running = [n.name for n in self.running()]
                raise AssertionError(f"no leader for {queue!r} among the running nodes {running}:\n{out}")
            time.sleep(0.2)

    def members(self, queue: str) -> set[str]:
        out = self.ctl("list_queues", "--quiet", "--no-table-headers", "name", "members")
        for line in out.splitlines():
            name, _, members = line.partition("\t")
            if name == queue:
                return {m.strip(" []\"'") for m in members.split(",") if m.strip(" []\"'")}
        return set()

    def await_nodes(self, count: int, timeout: float = 60) -> None:
        """Until *count* nodes are running members of the cluster."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.ctl("cluster_status", "--formatter", "json")
            if len(json.loads(out).get("running_nodes", [])) >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} running nodes:\n{out}")
            time.sleep(0.5)


def private_cluster(size: int = 3) -> Iterator[Cluster]:
    """The body of a cluster fixture: ``yield from private_cluster()``."""
    sbin = rabbitmq_sbin()
    if sbin is None:
        reason = f"rabbitmq-server is not installed (apt-get install rabbitmq-server, or set {ENV_SBIN})"
        if _ci():
            pytest.fail(f"{reason} -- CI is set, so cluster tests fail instead of skipping", pytrace=False)
        pytest.skip(reason)
    nodes = [BrokerNode(sbin) for _ in range(size)]
    cookie = secrets.token_hex(16).upper()
    for node in nodes:  # one cookie for all: the nodes and their CLI must talk to each other
        path = node.base / "home" / ".erlang.cookie"
        path.chmod(0o600)
        path.write_text(cookie)
        path.chmod(0o400)
    try:
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(BrokerNode.start, nodes))
        first = nodes[0]
        for node in nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
        cluster = Cluster(nodes)
        cluster.await_nodes(size)
        yield cluster
    finally:
        for node in nodes:
            try:
                node.destroy()
            except (RuntimeError, subprocess.TimeoutExpired):
                shutil.rmtree(node.base, ignore_errors=True)
