"""Django's test runner, with a fresh RabbitMQ vhost for the run (and Redis results under fresh ids)."""

import os
import uuid

from django.test.runner import DiscoverRunner

from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.constants import DEFAULT_BROKER_URL, ENV_BROKER_URL


class BrokerTestRunner(DiscoverRunner):
    def setup_test_environment(self, **kwargs):
        super().setup_test_environment(**kwargs)
        broker = BrokerURL.parse(os.environ.get(ENV_BROKER_URL) or DEFAULT_BROKER_URL)
        self.vhost = f"amqptasks-django-{uuid.uuid4().hex[:8]}"
        self.management = ManagementClient.for_broker(broker)
        self.management.create_vhost(self.vhost)
        self.management.set_permissions(self.vhost, broker.username)
        # Read by amqptasks when the App is first built, here and in the worker/beat processes the tests start.
        os.environ[ENV_BROKER_URL] = broker.with_vhost(self.vhost).to_url()

    def teardown_test_environment(self, **kwargs):
        self.management.delete_vhost(self.vhost)
        super().teardown_test_environment(**kwargs)
