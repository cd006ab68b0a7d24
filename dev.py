#!/usr/bin/env python3
"""Developer bootstrap for amqptasks. Standard library only: it runs with a bare Python (3.7+ to start).

    python3 dev.py demo                  the example project end to end (workers, tasks, results, DLQ)
    python3 dev.py test [pytest args]    ruff, mypy --strict, mkdocs build --strict, pytest against each broker
                                         target: the local RabbitMQ (all tests), then RabbitMQ 4.0 from
                                         tests/rabbitmq4.py (broker tests); AMQPTASKS_TEST_TARGETS=local or
                                         =rabbitmq4 runs one

Both make sure of Python >= 3.11 (re-running with a newer python3.x on PATH), a .venv with
`pip install -e '.[test]'` (skipped while pyproject.toml is unchanged) and a reachable RabbitMQ with its
management API (starting, or on Debian/Ubuntu as root installing, a local one when needed).
The broker is AMQPTASKS_BROKER_URL, default amqp://guest:guest@localhost:5672/%2F.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from socket import create_connection

# Demo: the example project (examples/shop) end to end, in a fresh vhost: examples/shop/demo.py runs its steps.
DEMO_PROJECT = os.path.join("examples", "shop")
DEMO_VHOST = os.environ.get("AMQPTASKS_DEMO_VHOST") or "amqptasks-demo"

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
STAMP = os.path.join(VENV, ".amqptasks-install.sha256")
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"
MANAGEMENT_PORT = 15672
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
USAGE = """usage: python3 dev.py demo                  run the example project: topology, workers, tasks, dead letters
       python3 dev.py test [pytest args]    run ruff, mypy --strict, mkdocs build --strict and pytest

Environment: AMQPTASKS_BROKER_URL (default amqp://guest:guest@localhost:5672/%2F)"""


class Fatal(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def say(line: str) -> None:
    print(line, flush=True)


def run_quiet(cmd: list[str], timeout: float = 600, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run cmd with its output in a temp file (not a pipe: daemons it forks may keep a pipe open)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = 124
            out.write(f"\n(timed out after {timeout:.0f} s)\n")
        except OSError as exc:
            return 127, str(exc)
        out.seek(0)
        return rc, out.read()


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def find_tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def is_debian_root() -> bool:
    return os.path.exists("/etc/debian_version") and hasattr(os, "geteuid") and os.geteuid() == 0


def apt_install(packages: list[str]) -> None:
    say(f"apt: installing {' '.join(packages)} (this can take a few minutes)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        rc, out = run_quiet(cmd, timeout=900, env=env)
        if rc != 0:
            raise Fatal(f"{out}\napt: `{' '.join(cmd)}` failed (exit {rc})")


# --- Python and venv ---------------------------------------------------------------------------------


def ensure_python() -> None:
    if sys.version_info >= (3, 11):  # noqa: UP036 - this script may be started by an older Python
        return
    found = sys.version.split()[0]
    if os.environ.get("AMQPTASKS_DEV_REEXEC") != "1":
        probe = "import sys; sys.exit(sys.version_info < (3, 11))"
        for name in ("python3.13", "python3.12", "python3.11"):
            exe = shutil.which(name)
            if exe and run_quiet([exe, "-c", probe], timeout=30)[0] == 0:
                say(f"python: {found} is too old, re-running with {exe}")
                os.environ["AMQPTASKS_DEV_REEXEC"] = "1"
                os.execv(exe, [exe, os.path.abspath(__file__), *sys.argv[1:]])
    raise Fatal(f"python: amqptasks needs Python >= 3.11, this is {found}, and no python3.11+ is on PATH", 2)


def venv_exe(name: str) -> str:
    if os.name == "nt":
        return os.path.join(VENV, "Scripts", name + ".exe")
    return os.path.join(VENV, "bin", name)


def create_venv() -> None:
    say("venv: creating .venv")
    rc, out = run_quiet([sys.executable, "-m", "venv", "--clear", VENV])
    if rc != 0 and is_debian_root() and sys.executable.startswith("/usr/bin/"):
        apt_install(["python3-venv", f"python3.{sys.version_info[1]}-venv"])  # Debian splits ensurepip off
        rc, out = run_quiet([sys.executable, "-m", "venv", "--clear", VENV])
    if rc != 0:
        raise Fatal(f"{out}\nvenv: `python -m venv` failed; on Debian/Ubuntu install python3-venv first")


def ensure_venv() -> None:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        wanted = hashlib.sha256(f.read()).hexdigest()
    python = venv_exe("python")
    try:
        with open(STAMP) as f:
            if f.read().strip() == wanted and os.path.exists(python):
                say("venv: .venv up to date")
                return
    except OSError:
        pass
    if not os.path.exists(python) or run_quiet([python, "-m", "pip", "--version"], timeout=60)[0] != 0:
        create_venv()
    say("venv: pip install -e '.[test]' into .venv ...")
    cmd = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", ".[test]"]
    with tempfile.TemporaryFile(mode="w+") as out:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
        out.seek(0)
        if rc != 0:
            raise Fatal(f"{out.read()}\nvenv: pip install failed (exit {rc})", rc)
    with open(STAMP, "w") as f:
        f.write(wanted + "\n")
    say("venv: installed")


# --- Broker ------------------------------------------------------------------------------------------


def mask(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo.split(':')[0]}:***@{hostport}"))


def port_open(host: str, port: int) -> bool:
    try:
        create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def management_request(method: str, host: str, user: str, password: str, path: str, body: str | None = None) -> int:
    """Send one management API request; its HTTP status (0 when nothing answers)."""
    netloc = f"[{host}]" if ":" in host else host
    data = body.encode() if body is not None else None
    request = urllib.request.Request(f"http://{netloc}:{MANAGEMENT_PORT}/api/{path}", data=data, method=method)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def demo_broker_url() -> str:
    """A fresh vhost for the demo, so it neither depends on nor changes what "/" holds."""
    parts = urllib.parse.urlsplit(os.environ.get("AMQPTASKS_BROKER_URL") or DEFAULT_BROKER_URL)
    host, user = parts.hostname or "localhost", urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    vhost = urllib.parse.quote(DEMO_VHOST, safe="")
    management_request("DELETE", host, user, password, f"vhosts/{vhost}")
    created = management_request("PUT", host, user, password, f"vhosts/{vhost}")
    granted = management_request(
        "PUT", host, user, password, f"permissions/{vhost}/{urllib.parse.quote(user, safe='')}",
        '{"configure": ".*", "write": ".*", "read": ".*"}',
    )  # fmt: skip
    if created not in (201, 204) or granted not in (201, 204):
        raise Fatal(f"demo: cannot create vhost {DEMO_VHOST!r} through the management API (HTTP {created}/{granted})")
    say(f"demo: using a fresh vhost {DEMO_VHOST!r}")
    return urllib.parse.urlunsplit(parts._replace(path="/" + vhost))


def management_status(host: str, user: str, password: str) -> int | None:
    """HTTP status of GET /api/overview, or None when nothing answers."""
    netloc = f"[{host}]" if ":" in host else host
    request = urllib.request.Request(f"http://{netloc}:{MANAGEMENT_PORT}/api/overview")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
    try:
        with opener.open(request, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def start_local_rabbitmq(host: str, port: int) -> bool:
    server = find_tool("rabbitmq-server")
    if server is None and is_debian_root():
        say("broker: rabbitmq-server is not installed; installing it with apt-get")
        apt_install(["rabbitmq-server"])
        if port_open(host, port):  # the package may have started it already
            return True
        server = find_tool("rabbitmq-server")
    if server is None:
        return False
    say("broker: starting rabbitmq-server -detached (waiting up to 90 s)")
    rc, out = run_quiet([server, "-detached"], timeout=120)
    if rc != 0:
        raise Fatal(f"{out}\nbroker: `rabbitmq-server -detached` failed (exit {rc})")
    if not wait_for(lambda: port_open(host, port), 90):
        raise Fatal(f"broker: rabbitmq-server started but {host}:{port} did not answer within 90 s")
    ctl = find_tool("rabbitmqctl")
    if ctl is not None:
        run_quiet([ctl, "await_startup"], timeout=120)
    return True


def ensure_broker() -> None:
    url = os.environ.get("AMQPTASKS_BROKER_URL") or DEFAULT_BROKER_URL
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port or (5671 if parts.scheme == "amqps" else 5672)
    except ValueError as exc:
        raise Fatal(f"broker: cannot parse AMQPTASKS_BROKER_URL {mask(url)}: {exc}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise Fatal(f"broker: AMQPTASKS_BROKER_URL must be amqp:// or amqps://, got {mask(url)}")
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    local = host in LOCAL_HOSTS
    where = f"{host}:{port}"
    if not port_open(host, port) and not (local and start_local_rabbitmq(host, port)):
        raise Fatal(
            f"broker: no RabbitMQ at {mask(url)}\n"
            "  start one with:  docker compose -f docker/compose.yaml up -d rabbitmq\n"
            "  or point AMQPTASKS_BROKER_URL at a running broker (amqp://USER:PASS@HOST:5672/%2F)"
        )
    status = management_status(host, user, password)
    plugins = find_tool("rabbitmq-plugins")
    if status is None and local and plugins is not None:
        say(f"broker: enabling the management plugin (waiting up to 60 s for :{MANAGEMENT_PORT})")
        rc, out = run_quiet([plugins, "enable", "rabbitmq_management"], timeout=120)
        if rc != 0:
            raise Fatal(f"{out}\nbroker: `rabbitmq-plugins enable rabbitmq_management` failed (exit {rc})")
        wait_for(lambda: management_status(host, user, password) is not None, 60)
        status = management_status(host, user, password)
    if status is None and local:
        hint = "it did not answer within 60 s of" if plugins else "enable it with:"
        raise Fatal(
            f"broker: RabbitMQ answers at {where} but its management API (:{MANAGEMENT_PORT}) does not;\n"
            f"  {hint}  rabbitmq-plugins enable rabbitmq_management"
        )
    if status is None:
        say(f"broker: RabbitMQ reachable at {where}; WARNING: no management API on :{MANAGEMENT_PORT}")
    elif status != 200:
        say(f"broker: RabbitMQ reachable at {where}; WARNING: management API answered HTTP {status}")
    else:
        say(f"broker: RabbitMQ reachable at {where} (management API on :{MANAGEMENT_PORT})")


# --- Commands ----------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ, VIRTUAL_ENV=VENV)  # AMQPTASKS_BROKER_URL, when set, passes through
    env["PATH"] = os.path.dirname(venv_exe("python")) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONHOME", None)
    return env


def run_step(title: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
    shown = " ".join([os.path.relpath(cmd[0], ROOT), *cmd[1:]])
    say(f"\n==> {title}: {shown}")
    try:
        return subprocess.run(cmd, cwd=ROOT, env={**child_env(), **(env or {})}).returncode
    except OSError as exc:
        say(f"cannot run {shown}: {exc}")
        return 127


RABBITMQ4 = os.path.join(ROOT, "tests", "rabbitmq4.py")
#: Which broker targets `dev.py test` runs pytest against (comma-separated): the local broker, and RabbitMQ 4.0
#: from tests/rabbitmq4.py (a cached Debian trixie root in a private network namespace; root on Debian only).
ENV_TARGETS = "AMQPTASKS_TEST_TARGETS"
TARGETS = ("local", "rabbitmq4")
#: On the second target only the tests that use the shared broker: the pure tests already ran, and the tests
#: with a private node (tests/broker_node.py) start the machine's own RabbitMQ, whichever target runs them.
RABBITMQ4_SELECTION = ["-m", "broker and not private_node"]


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def run_pytest(title: str, cmd: list[str]) -> tuple[int, str, float]:
    """Run a pytest command, streaming its output; (exit code, pytest's closing line, seconds)."""
    shown = " ".join(os.path.relpath(c, ROOT) if os.path.isabs(c) else c for c in cmd)
    say(f"\n==> {title}: {shown}")
    started = time.monotonic()
    closing = ""
    try:
        with subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                text = line.strip().strip("=").strip()
                if " in " in text and any(w in text for w in ("passed", "failed", "error", "skipped", "deselected")):
                    closing = text
        rc = proc.returncode
    except OSError as exc:
        say(f"cannot run {shown}: {exc}")
        rc = 127
    return rc, closing or "no pytest summary", time.monotonic() - started


def local_version() -> str:
    parts = urllib.parse.urlsplit(os.environ.get("AMQPTASKS_BROKER_URL") or DEFAULT_BROKER_URL)
    host = parts.hostname or "localhost"
    user, password = urllib.parse.unquote(parts.username or "guest"), urllib.parse.unquote(parts.password or "guest")
    netloc = f"[{host}]" if ":" in host else host
    request = urllib.request.Request(f"http://{netloc}:{MANAGEMENT_PORT}/api/overview")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as response:
            return "RabbitMQ " + str(json.load(response).get("rabbitmq_version", "?"))
    except (OSError, ValueError):
        return "RabbitMQ (version unknown)"


def rabbitmq4_version() -> str:
    rc, out = run_quiet([venv_exe("python"), RABBITMQ4, "version"], timeout=60)
    return out.strip() if rc == 0 and out.strip() else "RabbitMQ 4.0"


def selected_targets() -> list[str]:
    wanted = [t.strip() for t in (os.environ.get(ENV_TARGETS) or ",".join(TARGETS)).split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TARGETS]
    if unknown or not wanted:
        raise Fatal(f"test: {ENV_TARGETS}={os.environ.get(ENV_TARGETS)!r}: expected a comma-separated subset of "
                    f"{', '.join(TARGETS)}", 2)  # fmt: skip
    return wanted


def rabbitmq4_unusable() -> str | None:
    if not (is_debian_root() and find_tool("unshare") and find_tool("chroot") and find_tool("ip")):
        return "needs root on Debian/Ubuntu with unshare, chroot and ip (it debootstraps a trixie root)"
    return None


def cmd_test(extra: list[str]) -> int:
    targets = selected_targets()
    dirs = [d for d in ("amqptasks", "tests", "bench", "examples") if os.path.isdir(os.path.join(ROOT, d))]
    site = tempfile.mkdtemp(prefix="amqptasks-site-")  # the built site is thrown away: only its warnings matter
    steps = [
        ("ruff check", [venv_exe("ruff"), "check", *dirs]),
        ("ruff format", [venv_exe("ruff"), "format", "--check", *dirs]),
        ("mypy", [venv_exe("mypy"), "--strict", "amqptasks"]),
        # a broken link or anchor, or a docs page missing from mkdocs.yml's nav, fails this step
        ("mkdocs build --strict", [venv_exe("mkdocs"), "build", "--strict", "--site-dir", site]),
    ]
    try:
        for title, cmd in steps:
            rc = run_step(title, cmd, {"NO_MKDOCS_2_WARNING": "1"})
            if rc != 0:
                say(f"\ntest: FAILED at {title} (exit {rc})")
                return rc
    finally:
        shutil.rmtree(site, ignore_errors=True)
    results = run_targets(targets, extra)
    say("")
    for name, rc, closing, seconds in results:
        hint = " (no tests were collected)" if rc == 5 else ""
        say(f"test: {name}: {'OK' if rc == 0 else f'FAILED (exit {rc}){hint}'}: {closing} [{seconds:.0f} s]")
    failed = [rc for _, rc, _, _ in results if rc != 0]
    if failed:
        say("test: FAILED")
        return failed[0]
    titles = ", ".join(title for title, _ in steps)
    say(f"test: OK ({titles} and pytest against {len(results)} broker target(s) all passed)")
    return 0


def run_targets(targets: list[str], extra: list[str]) -> list[tuple[str, int, str, float]]:
    """pytest against each broker target in turn: (target, exit code, pytest's closing line, seconds)."""
    pytest = venv_exe("pytest")
    results: list[tuple[str, int, str, float]] = []
    if "local" in targets:
        name = f"{local_version()} (local broker, all tests)"
        results.append((name, *run_pytest(f"pytest against {name}", [pytest, *extra])))
    if "rabbitmq4" in targets:
        name = "RabbitMQ 4.0 (tests/rabbitmq4.py, broker tests)"
        why = rabbitmq4_unusable()
        if why is None:
            say("\n==> RabbitMQ 4.0 target: tests/rabbitmq4.py prepare (cached Debian trixie root; built if absent)")
            started = time.monotonic()
            rc = subprocess.run([venv_exe("python"), RABBITMQ4, "prepare"], cwd=ROOT).returncode
            if rc != 0:
                return [*results, (name, rc, "tests/rabbitmq4.py prepare failed", time.monotonic() - started)]
            name = f"{rabbitmq4_version()} (tests/rabbitmq4.py, broker tests)"
            cmd = [venv_exe("python"), RABBITMQ4, "run", "--", pytest, *RABBITMQ4_SELECTION, *extra]
            rc, closing, seconds = run_pytest(f"pytest against {name}", cmd)
            if rc == 5 and extra:  # the tests asked for hold no broker test: nothing to run on this target
                rc, closing = 0, "no broker tests among those selected"
            results.append((name, rc, closing, seconds))
        elif is_ci():
            results.append((name, 1, f"cannot run: it {why}", 0.0))
        else:
            say(f"\ntest: skipping the RabbitMQ 4.0 target: it {why} ({ENV_TARGETS}=local to skip it quietly)")
    return results


def cmd_demo() -> int:
    if not os.path.exists(venv_exe("amqptasks")):
        raise Fatal("demo: .venv has no `amqptasks` command; check [project.scripts] in pyproject.toml")
    url = demo_broker_url()
    say(f"demo: the example project in {DEMO_PROJECT}/ (tasks.py, shop.yaml, service.py, Procfile)")
    script = os.path.join(ROOT, DEMO_PROJECT, "demo.py")
    try:
        rc = subprocess.run([venv_exe("python"), script], cwd=os.path.dirname(script),
                            env={**child_env(), "AMQPTASKS_BROKER_URL": url}).returncode  # fmt: skip
    except OSError as exc:
        raise Fatal(f"demo: cannot run {script}: {exc}") from None
    if rc != 0:
        say(f"\ndemo: FAILED (exit {rc})")
        return rc
    given = os.environ.get("AMQPTASKS_BROKER_URL")
    export = f"AMQPTASKS_BROKER_URL={url}" if not given else f"AMQPTASKS_BROKER_URL=<yours, with vhost {DEMO_VHOST}>"
    say(f"""
demo: OK: every process it started has stopped; the vhost {DEMO_VHOST!r} is kept for you to explore. Try next:
  . .venv/bin/activate && cd {DEMO_PROJECT} && export {export}
  amqptasks dlq show ID orders shop.yaml     one dead letter in full (its ID is in the list above)
  amqptasks worker -A tasks:app --profile orders   then, in another shell, python service.py
  read docs/quickstart.md, or serve the docs site with: .venv/bin/mkdocs serve""")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        say(USAGE)
        return 0
    if not argv or argv[0] not in ("demo", "test") or (argv[0] == "demo" and len(argv) > 1):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        ensure_python()
        ensure_venv()
        ensure_broker()
        return cmd_test(argv[1:]) if argv[0] == "test" else cmd_demo()
    except Fatal as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
