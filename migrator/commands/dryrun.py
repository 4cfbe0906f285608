"""``--dry-run`` of `store`, `plan` and `run` with ``--coerce``: the rules on a sample of the
files, before and after (migrator/coerce/preview.py). Nothing is sent or planned."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from migrator.commands.common import fail_config, opt
from migrator.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def preview_options(func: F) -> F:
    """--sample, --show-phi and --format: what a --dry-run shows of the --coerce rules."""
    for decorator in reversed(
        [
            opt(
                "--sample",
                env="SAMPLE",
                type=click.IntRange(1, 100000),
                default=None,
                metavar="N",
                help="With --dry-run and --coerce: coerce N files (default 20), drawn "
                "uniformly from the whole listing with a fixed seed, and show each changed "
                "element before and after with its rule, e.g. --dry-run --sample 50.",
            ),
            opt(
                "--show-phi",
                env="SHOW_PHI",
                is_flag=True,
                help="With --dry-run: show the values in clear. By default every value but "
                "the equipment's (Modality, Manufacturer...) is masked as its length and a "
                "digest keyed anew by each command: <6 chars #3f2a91>. E.g. --dry-run --sample 5 "
                "--show-phi.",
            ),
            opt(
                "--format",
                "output_format",
                env="DRY_RUN_FORMAT",
                type=click.Choice(["text", "json"]),
                default="text",
                show_default=True,
                help="What --dry-run prints: text, or one JSON document (e.g. --dry-run "
                "--format json | jq '.coercion.files[] | select(.state == \"failed\")').",
            ),
        ]
    ):
        func = decorator(func)
    return func


def check_preview_options(o: dict[str, Any]) -> int:
    """The sample size; --sample / --show-phi / --format json without --dry-run: exit 2
    (they would be silently ignored by a command that sends)."""
    from migrator.coerce.preview import DEFAULT_SAMPLE

    if not o["dry_run"]:
        given = [
            name
            for name, on in (
                ("--sample", o["sample"] is not None),
                ("--show-phi", o["show_phi"]),
                ("--format json", o["output_format"] == "json"),
            )
            if on
        ]
        if given:
            fail_config(f"{', '.join(given)}: only with --dry-run (nothing to show when sending)")
    return int(o["sample"] or DEFAULT_SAMPLE)


def coerce_preview(sources: list[Any], config: Settings, o: dict[str, Any]) -> Any:
    """The preview of ``config``'s rules on a sample of ``sources``."""
    from migrator.coerce.preview import preview

    return preview(sources, config.coerce, check_preview_options(o), show_phi=o["show_phi"])
