"""The ``amqptasks`` command. Parsing only: every command calls into the package."""

from __future__ import annotations

import logging
import sys

import click

from amqptasks import __version__
from amqptasks.broker.logs import quiet_clients
from amqptasks.cli import output
from amqptasks.cli.beat import beat_command
from amqptasks.cli.config import config_group
from amqptasks.cli.dlq import dlq_group
from amqptasks.cli.events import events_command
from amqptasks.cli.inspect import control_group, inspect_group
from amqptasks.cli.send import send_command
from amqptasks.cli.status import status_command
from amqptasks.cli.topology import topology_group
from amqptasks.cli.worker import worker_command
from amqptasks.errors import AmqpTasksError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="amqptasks")
def cli() -> None:
    """amqptasks: tasks on RabbitMQ, with the topology declared in YAML."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # pika logs every broker-closed channel; probing closes channels on purpose, and real failures
    # reach the user as our own error messages.
    quiet_clients()


cli.add_command(topology_group)
cli.add_command(config_group)
cli.add_command(send_command)
cli.add_command(worker_command)
cli.add_command(beat_command)
cli.add_command(dlq_group)
cli.add_command(status_command)
cli.add_command(events_command)
cli.add_command(inspect_group)
cli.add_command(control_group)


def main() -> None:
    """Entry point: expected failures print a message and exit 1, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        output.error("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except AmqpTasksError as exc:
        output.error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
