"""Placeholder: replaced by the real `migrator scp` command."""

import click


@click.command("scp")
def scp_command() -> None:
    """Not implemented yet."""
    raise SystemExit(2)
