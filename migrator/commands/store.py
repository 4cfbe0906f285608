"""Placeholder: replaced by the real `migrator store` command."""

import click


@click.command("store")
def store_command() -> None:
    """Not implemented yet."""
    raise SystemExit(2)
