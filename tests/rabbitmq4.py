#!/usr/bin/env python3
"""A second broker target for the test suite: RabbitMQ 4.0 from Debian trixie, in a private network namespace.

    python3 tests/rabbitmq4.py prepare            build (or reuse) the cached trixie root; print its version
    python3 tests/rabbitmq4.py version            the cached root's RabbitMQ version (exit 1 when not built)
    python3 tests/rabbitmq4.py run -- CMD ARGS    run CMD where 127.0.0.1:5672/15672 is RabbitMQ 4.0 and
                                                  127.0.0.1:6379 a private Redis

The root is a `debootstrap --variant=minbase trixie` with trixie's rabbitmq-server installed by apt-get (about
a minute from the Debian archive), kept in /var/cache/amqptasks/rabbitmq4-trixie (AMQPTASKS_RABBITMQ4_ROOT) and
rebuilt only when missing or made by an older recipe. `run` starts, under `unshare`, a new network, PID and mount
namespace: inside it only loopback exists, so the broker, its management API and Redis listen on the standard
ports without ever meeting the shared RabbitMQ 3.10 on the host, and the command under test uses the default
URLs unchanged. The broker's data and logs live in a fresh directory under /tmp; the PID namespace ends every
process started inside (broker, epmd, Redis, workers) when the command ends, and the mount namespace takes the
root's bind mounts with it. Needs root on Debian/Ubuntu (debootstrap, unshare, chroot). Standard library only.

Broker settings: `deprecated_features.permit.transient_nonexcl_queues` and `...global_qos` are false, so this
4.0 node refuses what RabbitMQ 4.3 refuses by default (transient non-exclusive queues, global QoS) and the suite
catches either at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

#: Bump when the recipe below changes: a cached root made by another recipe is rebuilt.
RECIPE = "trixie minbase + rabbitmq-server, recipe 1"
SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
DEFAULT_ROOT = Path("/var/cache/amqptasks/rabbitmq4-trixie")
ENV_ROOT = "AMQPTASKS_RABBITMQ4_ROOT"
STAMP = ".amqptasks-recipe"
NODE = "rabbit@localhost"
PLUGINS = ["rabbitmq_management", "rabbitmq_auth_mechanism_ssl"]
START_TIMEOUT = 120.0
BROKER_CONF = """\
listeners.tcp.default = 5672
management.tcp.port = 15672
log.console = false
log.file.level = info
# What RabbitMQ 4.3 denies by default: refuse it here too, so the suite never depends on it.
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
"""


class Failed(Exception):
    pass


def say(line: str) -> None:
    print(f"rabbitmq4: {line}", flush=True)


def root_dir() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def _run(cmd: list[str], what: str, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        out.seek(0)
        text = out.read()
    if rc != 0:
        raise Failed(f"{what} failed (exit {rc}): {' '.join(cmd)}\n{text[-3000:]}")
    return text


def usable() -> str | None:
    """Why this machine cannot run the target, or None when it can."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return "needs root (debootstrap, unshare and chroot)"
    if not Path("/etc/debian_version").exists():
        return "needs Debian or Ubuntu (debootstrap from the Debian archive)"
    for tool in ("unshare", "chroot", "ip"):
        if shutil.which(tool, path="/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin") is None:
            return f"needs {tool} (util-linux / coreutils / iproute2)"
    return None


# --- the cached root ---------------------------------------------------------------------------------------


def ready(root: Path) -> bool:
    try:
        return (root / STAMP).read_text().strip() == RECIPE
    except OSError:
        return False


def prepare() -> Path:
    """The cached trixie root with rabbitmq-server, built when absent (under a lock: one build at a time)."""
    root = root_dir()
    if ready(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it right now
        if not ready(root):
            _build(root)
    return root


def _build(root: Path) -> None:
    started = time.monotonic()
    if shutil.which("debootstrap", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        say("installing debootstrap with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-q"], "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "-q", "debootstrap"], "apt-get install debootstrap", env=env)
    work = root.with_name(f"{root.name}.build-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    say(f"building a {SUITE} root with rabbitmq-server in {work} (about a minute; cached afterwards)")
    try:
        _run(["debootstrap", "--variant=minbase", SUITE, str(work), MIRROR], "debootstrap", timeout=1200)
        for conf in Path("/etc/apt/apt.conf.d").glob("99*"):  # this machine's apt settings (e.g. date checks)
            shutil.copy(conf, work / "etc/apt/apt.conf.d" / conf.name)
        policy = work / "usr/sbin/policy-rc.d"  # the package must not start a broker while installing
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
        _run(["chroot", str(work), "apt-get", "update", "-q"], "apt-get update (trixie)", env=env)
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "rabbitmq-server"]
        _run(["chroot", str(work), *install], "apt-get install rabbitmq-server (trixie)", env=env)
        _run(["chroot", str(work), "apt-get", "clean"], "apt-get clean", env=env)
        (work / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
        (work / STAMP).write_text(RECIPE + "\n")
        old = root.with_name(f"{root.name}.old-{os.getpid()}")
        if root.exists():
            root.rename(old)
        work.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"root ready: RabbitMQ {version(root)} in {root} (built in {time.monotonic() - started:.0f} s)")


def version(root: Path) -> str:
    found = sorted((root / "usr/lib/rabbitmq/lib").glob("rabbitmq_server-*"))
    return found[-1].name.partition("-")[2] if found else "unknown"


# --- inside the namespaces ---------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _management_ready() -> bool:
    request = urllib.request.Request("http://127.0.0.1:15672/api/overview")
    request.add_header("Authorization", "Basic " + b64encode(b"guest:guest").decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=3) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.HTTPError):
        return False


class Inside:
    """What runs as PID 1 of the new namespaces: mounts, Redis, the broker, then the command."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = Path(tempfile.mkdtemp(prefix="amqptasks-rabbitmq4-"))  # host /tmp, bind-mounted below
        self.children: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        base = str(self.base)
        return {
            "PATH": "/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": f"{base}/home",
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": NODE,
            "RABBITMQ_CONF_ENV_FILE": f"{base}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{base}/rabbitmq.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{base}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{base}/mnesia",
            "RABBITMQ_LOG_BASE": f"{base}/log",
            "RABBITMQ_PID_FILE": f"{base}/node.pid",
        }

    def setup(self) -> None:
        _run(["ip", "link", "set", "lo", "up"], "bringing up loopback")
        for source, target in (("/dev", "dev"), ("/tmp", "tmp")):
            _run(["mount", "--bind", source, str(self.root / target)], f"bind-mounting {source}")
        _run(["mount", "-t", "proc", "proc", str(self.root / "proc")], "mounting /proc in the root")
        (self.base / "home").mkdir()
        (self.base / "rabbitmq-env.conf").write_text("")  # never the package's env file
        (self.base / "rabbitmq.conf").write_text(BROKER_CONF)
        (self.base / "enabled_plugins").write_text(f"[{','.join(PLUGINS)}].\n")
        # rabbitmqctl for tests that call it (definitions import): the 4.0 CLI, inside the root.
        bin_dir = self.base / "bin"
        bin_dir.mkdir()
        exports = " ".join(f"{k}='{v}'" for k, v in self.env().items())
        for tool in ("rabbitmqctl", "rabbitmq-plugins", "rabbitmq-diagnostics", "rabbitmq-queues"):
            wrapper = bin_dir / tool
            wrapper.write_text(f'#!/bin/sh\nexec chroot {self.root} /usr/bin/env -i {exports} {tool} "$@"\n')
            wrapper.chmod(0o755)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        return _run(["chroot", str(self.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in self.env().items()),
                     "rabbitmqctl", *args], f"rabbitmqctl {' '.join(args)}", timeout=timeout)  # fmt: skip

    def start_redis(self) -> None:
        redis = shutil.which("redis-server")
        if redis is None:
            say("WARNING: no redis-server on this machine: the redis:// tests will fail or skip")
            return
        cmd = [redis, "--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"]
        log = open(self.base / "redis.log", "wb")  # noqa: SIM115 - the child keeps it
        self.children.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.base))

    def start_broker(self) -> None:
        started = time.monotonic()
        log = open(self.base / "server.out", "wb")  # noqa: SIM115 - the child keeps it
        cmd = ["chroot", str(self.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in self.env().items()),
               "rabbitmq-server"]  # fmt: skip
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.children.append(server)
        deadline = started + START_TIMEOUT
        while not (_port_open(5672) and _management_ready()):
            if server.poll() is not None:
                raise Failed(f"RabbitMQ exited with {server.returncode} while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise Failed(f"no answer on 5672 and 15672 within {START_TIMEOUT:.0f} s\n{self.log_tail()}")
            time.sleep(0.5)
        took = time.monotonic() - started
        say(f"RabbitMQ {version(self.root)} up on 127.0.0.1:5672 (management :15672) in {took:.0f} s")

    def log_tail(self, lines: int = 40) -> str:
        texts = [p.read_text(errors="replace") for p in (self.base / "server.out", *self.base.glob("log/*.log"))]
        return "\n".join("\n".join(t.splitlines()[-lines:]) for t in texts)

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def run(self, command: list[str]) -> int:
        try:
            self.setup()
            self.start_redis()
            self.start_broker()
            env = dict(os.environ)
            env["PATH"] = f"{self.base / 'bin'}{os.pathsep}{env.get('PATH', '')}"
            env["AMQPTASKS_TEST_TARGET"] = f"RabbitMQ {version(self.root)}"
            env.pop("AMQPTASKS_BROKER_URL", None)  # the default URL is this broker here
            return subprocess.run(command, env=env).returncode
        finally:
            self.stop()


# --- entry points ------------------------------------------------------------------------------------------


def run(command: list[str]) -> int:
    """Run *command* beside a private RabbitMQ 4.0 and Redis (see the module docstring); its exit code."""
    why = usable()
    if why is not None:
        raise Failed(f"cannot run the RabbitMQ 4.0 target here: it {why}")
    root = prepare()
    inner = [sys.executable, os.path.abspath(__file__), "_inside", str(root), "--", *command]
    # --kill-child: if unshare dies, the namespace's PID 1 gets SIGKILL, and with it everything inside. exec, so
    # that a signal for this process (a Ctrl-C, a CI timeout) reaches unshare itself.
    ns = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child", "--mount-proc"]
    sys.stdout.flush()
    os.execvp(ns[0], [*ns, *inner])


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["prepare"]:
            root = prepare()
            say(f"RabbitMQ {version(root)} root ready in {root}")
            return 0
        if argv[:1] == ["version"] and ready(root_dir()):
            print(f"RabbitMQ {version(root_dir())}")
            return 0
        if argv[:1] == ["run"] and argv[1:2] == ["--"] and len(argv) > 2:
            return run(argv[2:])
        if argv[:1] == ["_inside"] and len(argv) > 3 and argv[2] == "--":
            return Inside(Path(argv[1])).run(argv[3:])
    except Failed as exc:
        say(str(exc))
        return 3
    if argv[:1] == ["version"]:
        return 1
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
