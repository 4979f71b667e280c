"""The `meshd` command line: a thin click layer over the node and its control API."""

from __future__ import annotations

import click

from meshd import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshd")
def cli() -> None:
    """meshd: a peer-to-peer mesh of agents with no central server."""


def main() -> None:
    """Run the `meshd` command line."""
    cli(prog_name="meshd")
