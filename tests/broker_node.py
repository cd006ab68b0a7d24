"""A private RabbitMQ node for tests that stop, restart or reconfigure a broker.

The shared broker (port 5672) is never touched: this node has its own name (``amqptasks-fault-<random>@localhost``),
free AMQP and distribution ports on 127.0.0.1, its own data, logs, config, plugins file and Erlang cookie, all in one
temporary directory that is removed afterwards. No plugin is enabled unless asked for (no management listener to
collide with).

``stop()``/``start()`` stop and start the whole Erlang node on the same data directory, so durable queues and
persistent messages survive; ``stop_app()``/``start_app()`` only stop RabbitMQ inside the running node (faster).
Either way every client connection is closed.

Without ``rabbitmq-server`` the tests skip, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

#: Starting a node from cold takes ~5-10 s on this kind of machine; a loaded CI box may need more.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: Where a Debian/Ubuntu package keeps the real scripts (/usr/sbin/rabbitmq-server is a wrapper that su's to the
#: rabbitmq user, who could not write to our temporary directory).
PACKAGE_SBIN = Path("/usr/lib/rabbitmq/bin")
ENV_SBIN = "AMQPTASKS_TEST_RABBITMQ_SBIN"


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def rabbitmq_sbin() -> Path | None:
    """The directory holding the real ``rabbitmq-server`` and ``rabbitmqctl`` scripts, or None."""
    candidates = [os.environ.get(ENV_SBIN), str(PACKAGE_SBIN)]
    found = shutil.which("rabbitmq-server")
    if found is not None:
        candidates.append(str(Path(found).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "rabbitmq-server").exists() and (Path(candidate) / "rabbitmqctl").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerNode:
    """One private RabbitMQ node; see the module docstring. ``url`` is its AMQP URL (guest, default vhost)."""

    def __init__(
        self,
        sbin: Path,
        *,
        config: Mapping[str, object] | None = None,
        advanced: str | None = None,
        plugins: Sequence[str] = (),
    ) -> None:
        self.sbin = sbin
        self.name = f"amqptasks-fault-{secrets.token_hex(4)}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="amqptasks-node-"))
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen: int | None = None  # the VM's pid while SIGSTOPped
        self.plugins = list(plugins)
        self._write_files(config or {}, advanced)

    def __repr__(self) -> str:
        return f"BrokerNode({self.name!r}, port={self.port})"

    def _write_files(self, extra: Mapping[str, object], advanced: str | None) -> None:
        home = self.base / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"  # private: the CLI calls below use the same HOME
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        lines = {
            "listeners.tcp.local": f"127.0.0.1:{self.port}",
            "log.console": "false",
            "log.file.level": "info",
            **extra,
        }
        (self.base / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
        if advanced is not None:
            (self.base / "advanced.config").write_text(advanced)
        (self.base / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        # Never read /etc/rabbitmq/rabbitmq-env.conf: it names the shared node.
        (self.base / "rabbitmq-env.conf").write_text("")

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.base / "home"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.base / "node.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    # --- control ----------------------------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <this node> ARGS``; raises with its output on failure."""
        completed = subprocess.run(
            [str(self.sbin / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if completed.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {self.name} {' '.join(args)} exited {completed.returncode}:\n"
                f"{completed.stdout}{completed.stderr}\n{self.log_tail()}"
            )
        return completed.stdout

    def start(self) -> None:
        """Start the node (in the foreground of a child process we own) and wait until RabbitMQ runs."""
        assert self._process is None or self._process.poll() is not None, f"{self} is already running"
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self._process = subprocess.Popen(
                [str(self.sbin / "rabbitmq-server")],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on pytest must not hit the broker before the finalizer does
            )  # fmt: skip
        finally:
            log.close()
        self._await_startup()

    def _await_startup(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"{self} exited with {self._process.returncode} while starting:\n{self.log_tail()}")
            try:
                # Fails at once while the node is not yet registered with epmd: retry until the deadline.
                self.ctl("await_startup", "--timeout", "10", timeout=20)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def freeze(self) -> None:
        """SIGSTOP the node's Erlang VM: its sockets stay open and it answers nothing (a hung VM, a black hole)."""
        self._frozen = int(self.ctl("eval", "list_to_integer(os:getpid()).").strip())
        os.kill(self._frozen, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        frozen, self._frozen = self._frozen, None
        if frozen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the whole node; its data directory (durable queues, persistent messages) stays."""
        self.thaw()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            self.ctl("stop", timeout=STOP_TIMEOUT)
            process.wait(timeout=STOP_TIMEOUT)
        except (RuntimeError, subprocess.TimeoutExpired):
            process.kill()  # only the node we started, by its pid
            process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (a crash, a lost machine): no clean shutdown; its data directory stays."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        vm = int((self.base / "node.pid").read_text().split()[0])  # the VM's own pid, written by RabbitMQ
        os.kill(vm, signal.SIGKILL)  # only the node we started, by its pid
        if vm != process.pid:
            process.kill()
        process.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while Path(f"/proc/{vm}").exists() and time.monotonic() < deadline:  # gone, not just signalled
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop_app(self) -> None:
        """Stop RabbitMQ inside the running node: every connection is closed, the queues stay on disk."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")

    def destroy(self) -> None:
        """Stop the node and remove every file it had."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        """The node's main log file (what the broker says about connections, channels and consumers)."""
        path = self.base / "log" / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        out = self.base / "server.out"
        texts = [self.log(), out.read_text(errors="replace") if out.exists() else ""]
        tail = "\n".join("\n".join(t.splitlines()[-lines:]) for t in texts)
        return f"--- {self} log tail\n{tail}"


def private_node(
    config: Mapping[str, object] | None = None, advanced: str | None = None, plugins: Sequence[str] = ()
) -> Iterator[BrokerNode]:
    """The body of a node fixture: ``yield from private_node({...rabbitmq.conf keys...})`` in a module fixture.

    *advanced* is the text of an ``advanced.config`` (Erlang terms) for settings rabbitmq.conf cannot express;
    *plugins* are enabled (e.g. ``rabbitmq_auth_mechanism_ssl``).
    """
    sbin = rabbitmq_sbin()
    if sbin is None:
        reason = f"rabbitmq-server is not installed (apt-get install rabbitmq-server, or set {ENV_SBIN})"
        if _ci():
            pytest.fail(f"{reason} -- CI is set, so fault tests fail instead of skipping", pytrace=False)
        pytest.skip(reason)
    node = BrokerNode(sbin, config=config, advanced=advanced, plugins=plugins)
    try:
        node.start()
        yield node
    finally:
        node.destroy()


@pytest.fixture(scope="module")
def broker_node() -> Iterator[BrokerNode]:
    """A private node with the default configuration, one per test module."""
    yield from private_node()
