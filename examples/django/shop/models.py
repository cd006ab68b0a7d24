from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    confirmed = models.BooleanField(default=False)


class Tick(models.Model):
    """One run of the periodic ``tick`` task (its task id is beat's run id: unique per scheduled time)."""

    task_id = models.CharField(max_length=200)
    at = models.DateTimeField(auto_now_add=True)
