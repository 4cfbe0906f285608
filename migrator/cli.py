"""The ``migrator`` command line: one click group, one module per command.

Command modules are imported only when their command runs (or for ``--help``): importing
all of them (pydicom, pynetdicom, Celery, boto3) costs ~0.5 s, which every `store` of a few
files and every probe would otherwise pay.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

#: Command name -> "module:attribute", in the order --help lists them.
COMMANDS = {
    "run": "migrator.commands.run:run_command",
    "plan": "migrator.commands.run:plan_command",
    "worker": "migrator.commands.run:worker_command",
    "status": "migrator.commands.jobs:status_command",
    "jobs": "migrator.commands.jobs:jobs_command",
    "retry": "migrator.commands.jobs:retry_command",
    "limit": "migrator.commands.jobs:limit_command",
    "pause": "migrator.commands.control:pause_command",
    "resume": "migrator.commands.control:resume_command",
    "cancel": "migrator.commands.control:cancel_command",
    "urgent": "migrator.commands.control:urgent_command",
    "report": "migrator.commands.report:report_command",
    "verify": "migrator.commands.verify:verify_command",
    "flower": "migrator.commands.flower:flower_command",
    "check-health": "migrator.commands.health:check_health_command",
    "store": "migrator.commands.store:store_command",
    "echo": "migrator.commands.echo:echo_command",
    "scp": "migrator.commands.scp:scp_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command: Any = getattr(importlib.import_module(module), attr)
        return command  # type: ignore[no-any-return]


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="pacs-migrator")
def main() -> None:
    """pacs-migrator: move DICOM archives into a PACS and account for every file.

    \b
    Migrations (Celery workers, one Redis; embedded when no --redis-url):
      migrator run /archive --host pacs.example.org --called-ae PACS
      migrator plan s3://bucket/2019/ --host pacs --called-ae PACS --redis-url redis://r:6379/0
      migrator worker --redis-url redis://r:6379/0
      migrator status JOB --redis-url redis://r:6379/0 --watch
      migrator pause JOB --redis-url redis://r:6379/0 --wait   (resume JOB, cancel JOB)
      migrator run /archive --host pacs --called-ae PACS --order newest-study-first \\
          --schedule "tz=Europe/Berlin; Mon-Fri 07:00-19:00 rate=20 assoc=2; * rate=400"

    \b
    Single-machine tools:
      migrator store --host pacs.example.org --called-ae PACS --dir /archive -R
      migrator echo pacs.example.org 104 --called-ae PACS
      migrator scp 11112 --aet MIGRATOR-SCP --output-dir ./received

    Every option can also be set with a MIGRATOR_* environment variable (see each
    command's --help).
    """
    # Before the command runs: a password given on the command line (--redis-url) is
    # masked in this process's title (ps, /proc/PID/cmdline).
    from migrator.proctitle import hide_secrets

    hide_secrets()
    # A bad MIGRATOR_REDIS_RIDE_OUT ends every command at once, in one line naming it (exit
    # 2), instead of a traceback from the first Redis client, or from a worker's task.
    from migrator.env import redis_ride_out
    from migrator.errors import ConfigError

    try:
        redis_ride_out(0.0)
    except ConfigError as exc:
        # Imported only here: the commands' shared module costs ~12 ms of every start.
        from migrator.commands.common import fail

        fail(exc)
