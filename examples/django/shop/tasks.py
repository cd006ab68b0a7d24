"""The shop's tasks: amqptasks tasks (shared_task) and a Django tasks-framework task, all run by amqptasks."""

try:
    from django.tasks import task
except ImportError:  # before Django 6: the django-tasks backport
    from django_tasks import task

from amqptasks.contrib.django import shared_task
from shop.models import Order, Tick


@shared_task(queue="shop")
def confirm_order(order_id: int) -> str:
    order = Order.objects.get(pk=order_id)  # exists: the task was published after the view's commit
    order.confirmed = True
    order.save(update_fields=["confirmed"])
    return f"order {order_id} confirmed"


@shared_task(queue="shop", bind=True)
def tick(self) -> None:
    Tick.objects.create(task_id=self.request.id)


@task(queue_name="shop")
def add_numbers(a: int, b: int) -> int:
    return a + b
