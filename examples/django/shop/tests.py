"""The shop against a real RabbitMQ (a fresh vhost per run, see testrunner.py) and real worker/beat processes."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import Client, TransactionTestCase

from amqptasks.broker import BrokerURL, open_blocking
from amqptasks.constants import ENV_BROKER_URL
from amqptasks.contrib.django import get_app
from amqptasks.contrib.django.models import PeriodicTask
from shop.models import Order, Tick
from shop.tasks import add_numbers, confirm_order

BASE_DIR = Path(__file__).resolve().parent.parent
AMQPTASKS = str(Path(sys.executable).with_name("amqptasks"))


def until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class Process:
    """``amqptasks ARGS`` for this project (its test database), with its log lines collected."""

    def __init__(self, *args: str) -> None:
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="shopsite.settings",
            SHOP_DB=connection.settings_dict["NAME"],
            PYTHONUNBUFFERED="1",
        )
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [AMQPTASKS, *args], cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        regex = re.compile(pattern)
        found = until(lambda: next((x for x in self.lines if regex.search(x)), None) or self.proc.poll() is not None,
                      timeout, f"a line matching {pattern!r} (log: {self.lines[-60:]})")  # fmt: skip
        if not isinstance(found, str):
            raise AssertionError(f"process exited with {self.proc.returncode}: {self.lines[-30:]}")
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


def queued(queue: str) -> int:
    """Messages ready in *queue* right now (the broker's exact count)."""
    conn = open_blocking(BrokerURL.parse(os.environ[ENV_BROKER_URL]))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


class ShopTestCase(TransactionTestCase):
    """Transactions really commit here (a TestCase's would never), as in production."""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        get_app().provision()  # the shop queue exists before anything is published

    def start(self, *args: str) -> Process:
        process = Process(*args)
        self.addCleanup(process.stop)
        return process


class PublishingAfterCommit(ShopTestCase):
    def test_a_task_is_published_when_the_transaction_commits_not_before(self) -> None:
        before = queued("shop")
        with transaction.atomic():
            order = Order.objects.create(item="lamp")
            confirm_order.delay_on_commit(order.pk)
            self.assertEqual(queued("shop"), before, "published before the commit")
        self.assertEqual(queued("shop"), before + 1)

    def test_a_view_that_commits_publishes_and_one_that_rolls_back_publishes_nothing(self) -> None:
        client = Client(raise_request_exception=False)
        before = queued("shop")
        self.assertEqual(client.post("/orders/", {"item": "book"}).status_code, 200)
        self.assertEqual(queued("shop"), before + 1)
        self.assertEqual(client.post("/orders/", {"item": "chair", "fail": "1"}).status_code, 500)
        self.assertEqual(queued("shop"), before + 1, "a rolled-back request published its task")
        self.assertEqual(list(Order.objects.values_list("item", flat=True)), ["book"])


class TasksRunByTheWorker(ShopTestCase):
    def test_the_worker_runs_shared_tasks_and_django_tasks_and_reports_their_results(self) -> None:
        self.start("worker", "-Q", "shop", "-l", "info").wait_for(r"ready|consuming")
        response = Client().post("/orders/", {"item": "desk"})
        order_id = response.json()["order"]
        until(lambda: Order.objects.get(pk=order_id).confirmed, 20, "the worker confirmed the order")

        result = add_numbers.enqueue(2, 3)  # Django's tasks framework, through amqptasks
        self.assertEqual(result.status, "READY")

        def finished() -> bool:
            result.refresh()
            return bool(result.is_finished)

        until(finished, 20, "the django.tasks task finished")
        self.assertEqual(result.status, "SUCCESSFUL")
        self.assertEqual(result.return_value, 5)
        self.assertEqual(add_numbers.get_result(result.id).return_value, 5)

    def test_a_process_pool_worker_uses_the_database_from_its_children(self) -> None:
        # The worker forks its pool children after loading the project: each must open its own connection.
        self.start("worker", "-Q", "shop", "-l", "info", "--pool", "processes", "-c", "2").wait_for(r"ready|consuming")
        orders = [Client().post("/orders/", {"item": f"item {n}"}).json()["order"] for n in range(6)]
        until(lambda: Order.objects.filter(pk__in=orders, confirmed=True).count() == 6, 30, "6 orders confirmed")


class ScheduleEditedInTheAdmin(ShopTestCase):
    def test_an_entry_added_in_the_admin_fires_within_10_s_and_stops_when_disabled(self) -> None:
        self.start("worker", "-Q", "shop", "-l", "info").wait_for(r"ready|consuming")
        beat = self.start("beat", "-l", "info")
        beat.wait_for(r"beat: leader")
        admin = Client()
        admin.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
        form = {"name": "tick", "task": "shop.tasks.tick", "every": "1", "cron": "", "timezone": "UTC",
                "enabled": "on", "args": "[]", "kwargs": "{}", "queue": "", "priority": ""}  # fmt: skip
        added_at = time.monotonic()
        response = admin.post("/admin/amqptasks/periodictask/add/", form)
        self.assertEqual(response.status_code, 302, response.content[:2000])
        until(lambda: Tick.objects.count() >= 2, 10, "two runs of the entry added in the admin")
        self.assertLess(time.monotonic() - added_at, 10)

        entry_id = PeriodicTask.objects.get(name="tick").pk
        disabled = admin.post(f"/admin/amqptasks/periodictask/{entry_id}/change/", {**form, "enabled": ""})
        self.assertEqual(disabled.status_code, 302, disabled.content[:3000])
        removed = beat.wait_for(r"beat: entry tick removed", 10)
        self.assertTrue(removed)
        sent = [x for x in beat.lines if "beat: sent beat:tick:" in x]
        until(lambda: Tick.objects.count() >= len(sent), 20, "the worker ran every run beat sent")
        ids = list(Tick.objects.values_list("task_id", flat=True))
        self.assertEqual(len(ids), len(set(ids)), f"a run fired twice: {ids}")
        self.assertEqual(len(ids), len(sent))
