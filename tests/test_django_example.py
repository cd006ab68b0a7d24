"""examples/django: ``manage.py check`` and its own test suite (``manage.py test``), against the real broker.

The example's tests drive real processes (``amqptasks worker``/``beat`` started for the project with
``DJANGO_SETTINGS_MODULE``, no ``-A``) and cover publishing after commit, a ``django.tasks`` task run by our
worker, and a schedule added in the admin firing without restarting beat (examples/django/shop/tests.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from amqptasks.broker import BrokerURL
from amqptasks.constants import ENV_BROKER_URL

pytest.importorskip("django", reason="Django is in the test extra: pip install -e '.[test]'")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django"


def manage(broker: BrokerURL, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env[ENV_BROKER_URL] = broker.to_url()
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(300)
def test_the_django_example_passes_check_and_its_own_tests(broker: BrokerURL, tmp_path: Path) -> None:
    check = manage(broker, "check", timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no issues" in check.stdout

    tests = manage(broker, "test", "--noinput", timeout=280)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "\nOK\n" in tests.stderr, tests.stderr
    ran = next(line for line in tests.stderr.splitlines() if line.startswith("Ran "))
    assert int(ran.split()[1]) >= 4, ran


def test_worker_without_app_or_django_settings_says_which_to_give(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    amqptasks = str(Path(sys.executable).with_name("amqptasks"))
    for command in (["worker", "-Q", "work"], ["beat"]):
        run = subprocess.run([amqptasks, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, run.stderr
        assert "pass -A pkg.module:app (or set DJANGO_SETTINGS_MODULE for a Django project)" in run.stderr
        assert "Traceback" not in run.stderr


def test_settings_give_the_yaml_the_broker_and_overrides(tmp_path: Path) -> None:
    from amqptasks.contrib.django.settings import SettingsError, config_from

    yaml_file = tmp_path / "amqptasks.yaml"
    yaml_file.write_text("topology:\n  queues:\n    - name: shop\nresults:\n  backend: rpc://\n")
    setting = {"CONFIG": yaml_file, "BROKER_URL": "amqp://u:p@h:5672/shop"}
    config = config_from(setting, env={})
    assert [q.name for q in config.topology.queues] == ["shop"]
    assert config.broker.url == "amqp://u:p@h:5672/shop"
    assert config_from(setting, env={ENV_BROKER_URL: "amqp://u:p@other:5672/x"}).broker.url.endswith("other:5672/x")

    overridden = config_from({**setting, "OVERRIDES": {"results": {"backend": None}}}, env={})
    assert overridden.results.backend is None
    assert [q.name for q in overridden.topology.queues] == ["shop"]

    with pytest.raises(SettingsError, match=r"unknown keys \['BROKER'\]"):
        config_from({"BROKER": "amqp://"}, env={})
    (tmp_path / "main.yaml").write_text("include: [amqptasks.yaml]\n")
    with pytest.raises(SettingsError, match=r"cannot be combined with .*include"):
        config_from({"CONFIG": tmp_path / "main.yaml", "OVERRIDES": {"results": {}}}, env={})
