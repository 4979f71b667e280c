"""The `meshd` command line: a thin click layer over the node and its control API."""

from __future__ import annotations

import click

from meshd import __version__
from meshd.cli_agent import agent_group, send_command
from meshd.cli_client import id_command, peers_command, status_command
from meshd.cli_daemon import init_command, run_command
from meshd.cli_pubsub import pubsub_group
from meshd.cli_swarm import swarm_group
from meshd.cli_top import top_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshd")
def cli() -> None:
    """meshd: a peer-to-peer mesh of agents with no central server."""


cli.add_command(id_command)
cli.add_command(peers_command)
cli.add_command(status_command)
cli.add_command(top_command)
cli.add_command(init_command)
cli.add_command(run_command)
cli.add_command(agent_group)
cli.add_command(send_command)
cli.add_command(pubsub_group)
cli.add_command(swarm_group)


def main() -> None:
    """Run the `meshd` command line."""
    cli(prog_name="meshd")
