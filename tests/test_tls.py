"""TLS for real: a private node with a TLS listener and certificates the test makes (tests/tls_certs.py).

Publishing (the test process) and consuming (an ``amqptasks worker`` subprocess) go over ``amqps://`` with
verification on. A client given the wrong CA, or a URL naming a host the certificate is not for, is refused
with a message naming the certificate problem. A client certificate logs in with EXTERNAL
(rabbitmq_auth_mechanism_ssl), as the user its common name names.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from amqptasks.broker import BrokerURL
from amqptasks.errors import ConnectionError
from tests.broker_node import BrokerNode, private_node
from tests.cli_helpers import run
from tests.tls_certs import CA, Issued
from tests.worker_helpers import Project, worker_burst

CLIENT_USER = "amqptasks-tls-client"


@dataclass(frozen=True)
class Certificates:
    ca: CA
    wrong_ca: CA
    server: Issued
    client: Issued


@dataclass(frozen=True)
class TLSNode:
    node: BrokerNode
    port: int
    certs: Certificates

    def url(self, host: str = "localhost", *, ca: Path | None = None, client: bool = False) -> BrokerURL:
        query = {"cacertfile": str(ca or self.certs.ca.cert_file)}
        if client:
            query.update(
                auth_mechanism="external",
                certfile=str(self.certs.client.cert_file),
                keyfile=str(self.certs.client.key_file),
            )
        return BrokerURL.parse(
            f"amqps://guest:guest@{host}:{self.port}/%2F?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSNode]:
    directory = tmp_path_factory.mktemp("tls")
    directory.chmod(0o755)
    ca, wrong_ca = CA(directory, "amqptasks-test-ca"), CA(directory, "some-other-ca")
    certs = Certificates(
        ca, wrong_ca, ca.issue("localhost", dns_names=("localhost",)), ca.issue(CLIENT_USER, client=True)
    )
    port = _free_port()
    config = {
        "listeners.ssl.local": f"127.0.0.1:{port}",
        "ssl_options.cacertfile": certs.ca.cert_file,
        "ssl_options.certfile": certs.server.cert_file,
        "ssl_options.keyfile": certs.server.key_file,
        "ssl_options.verify": "verify_peer",
        "ssl_options.fail_if_no_peer_cert": "false",  # PLAIN logins come without a client certificate
        "auth_mechanisms.1": "PLAIN",
        "auth_mechanisms.2": "EXTERNAL",
        "ssl_cert_login_from": "common_name",
    }
    for node in private_node(config, plugins=["rabbitmq_auth_mechanism_ssl"]):
        node.ctl("add_user", CLIENT_USER, uuid.uuid4().hex)  # its password is never used: EXTERNAL
        node.ctl("set_permissions", "-p", "/", CLIENT_USER, ".*", ".*", ".*")
        yield TLSNode(node, port, certs)


YAML = """
topology:
  queues: [{name: secure, dead_letter: auto}]
routes:
  - {task: "*", queue: secure}
"""

TASKS = """
@app.task(name="tls.echo", bind=True)
def echo(self, text):
    record(id=self.request.id, text=text)
"""


def project_on(tmp_path: Path, url: BrokerURL) -> Project:
    return Project.create(tmp_path, url, TASKS, YAML)


def test_tasks_are_published_and_consumed_over_amqps_with_verification(tmp_path: Path, tls_node: TLSNode) -> None:
    # Given a project whose broker URL is amqps:// with the CA that signed the node's certificate
    project = project_on(tmp_path, tls_node.url())
    applied = run(["topology", "apply", "app.yaml"], cwd=tmp_path, env=project.env)
    assert applied.code == 0, str(applied)

    # When the test process publishes, and a worker subprocess drains the queue
    app = project.app()
    sent = [app.send_task("tls.echo", args=[f"secret-{i}"]).id for i in range(3)]
    publisher = tls_node.node.ctl("list_connections", "ssl", "ssl_protocol", "peer_cert_subject", "user")
    app.close()
    burst = worker_burst(project, "-Q", "secure")

    # Then every task ran once, and the publisher's connection was TLS (1.2 or 1.3), without a client certificate
    assert burst.code == 0, str(burst)
    assert sorted(r["id"] for r in project.records()) == sorted(sent)
    assert "true\ttlsv1." in publisher.lower() and "\tguest" in publisher, publisher


def test_a_client_given_the_wrong_ca_is_refused_naming_the_certificate_problem(
    tmp_path: Path, tls_node: TLSNode
) -> None:
    url = tls_node.url(ca=tls_node.certs.wrong_ca.cert_file)
    project = project_on(tmp_path, url)

    planned = run(["topology", "plan", "app.yaml"], cwd=tmp_path, env=project.env)
    burst = worker_burst(project, "-Q", "secure")

    for result in (planned, burst):
        assert result.code != 0, str(result)
        assert "certificate verify failed" in result.stderr, str(result)
        assert "the server's certificate is not signed by a trusted CA" in result.stderr, str(result)
        assert "guest:guest" not in result.stderr
    with pytest.raises(ConnectionError, match="the server's certificate is not signed by a trusted CA"):
        project.app().send_task("tls.echo", args=["never sent"])


def test_a_client_connecting_by_a_name_the_certificate_is_not_for_is_refused(tmp_path: Path, tls_node: TLSNode) -> None:
    # The certificate is for "localhost"; 127.0.0.1 is the same node but not the name in the certificate
    project = project_on(tmp_path, tls_node.url("127.0.0.1"))

    planned = run(["topology", "plan", "app.yaml"], cwd=tmp_path, env=project.env)

    assert planned.code != 0, str(planned)
    assert "certificate is not valid for '127.0.0.1'" in planned.stderr, str(planned)
    assert "the server's certificate is not for the host in the broker URL" in planned.stderr, str(planned)


def test_a_client_certificate_logs_in_with_external_as_its_common_name(tmp_path: Path, tls_node: TLSNode) -> None:
    # Given a URL with auth_mechanism=external and a client certificate for CN=amqptasks-tls-client
    project = project_on(tmp_path, tls_node.url(client=True))
    applied = run(["topology", "apply", "app.yaml"], cwd=tmp_path, env=project.env)
    assert applied.code == 0, str(applied)

    # When a task is published and a worker runs it, both logged in by certificate
    app = project.app()
    sent = app.send_task("tls.echo", args=["by certificate"]).id
    users = tls_node.node.ctl("list_connections", "user", "auth_mechanism")
    app.close()
    burst = worker_burst(project, "-Q", "secure")

    # Then it ran, and the broker saw the certificate's user, logged in with EXTERNAL
    assert burst.code == 0, str(burst)
    assert [r["id"] for r in project.records()] == [sent]
    assert f"{CLIENT_USER}\tEXTERNAL" in users, users
