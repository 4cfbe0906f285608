"""Placeholder: replaced by the real `migrator echo` command."""

import click


@click.command("echo")
def echo_command() -> None:
    """Not implemented yet."""
    raise SystemExit(2)
