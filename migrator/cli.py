"""The ``migrator`` command line: one click group, one module per command."""

from __future__ import annotations

import click

from migrator.commands.echo import echo_command
from migrator.commands.flower import flower_command
from migrator.commands.jobs import jobs_command, limit_command, retry_command, status_command
from migrator.commands.report import report_command
from migrator.commands.run import plan_command, run_command, worker_command
from migrator.commands.scp import scp_command
from migrator.commands.store import store_command
from migrator.commands.verify import verify_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pacs-migrator")
def main() -> None:
    """pacs-migrator: move DICOM archives into a PACS and account for every file.

    \b
    Migrations (Celery workers, one Redis; embedded when no --redis-url):
      migrator run /archive --host pacs.example.org --called-ae PACS
      migrator plan s3://bucket/2019/ --host pacs --called-ae PACS --redis-url redis://r:6379/0
      migrator worker --redis-url redis://r:6379/0
      migrator status JOB --redis-url redis://r:6379/0 --watch

    \b
    Single-machine tools:
      migrator store --host pacs.example.org --called-ae PACS --dir /archive -R
      migrator echo pacs.example.org 104 --called-ae PACS
      migrator scp 11112 --aet MIGRATOR-SCP --output-dir ./received

    Every option can also be set with a MIGRATOR_* environment variable (see each
    command's --help).
    """


main.add_command(store_command)
main.add_command(echo_command)
main.add_command(scp_command)
main.add_command(run_command)
main.add_command(plan_command)
main.add_command(worker_command)
main.add_command(status_command)
main.add_command(retry_command)
main.add_command(jobs_command)
main.add_command(limit_command)
main.add_command(report_command)
main.add_command(flower_command)
main.add_command(verify_command)
