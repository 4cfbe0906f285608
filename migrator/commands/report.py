"""``migrator report``: a job's report, from its ledger, in any format, at any moment."""

from __future__ import annotations

import click

from migrator.commands.common import fail_config, opt
from migrator.commands.jobstate import job_ledger, redis_option, state_dir_option
from migrator.exitcodes import ExitStatus


@click.command("report")
@click.argument("job", required=False)
@redis_option
@state_dir_option
@opt(
    "--format",
    "fmt",
    env="REPORT_FORMAT",
    type=click.Choice(["text", "json", "csv", "html"]),
    default=None,
    help="text: the summary with failures by DICOM status; json: everything, machine-"
    "readable; csv: one row per file not stored (--by study: one per study); html: one "
    "self-contained page with charts. Default: from the --output extension, text without "
    "--output.",
)
@opt(
    "--by",
    env="REPORT_BY",
    type=click.Choice(["file", "study"]),
    default="file",
    show_default=True,
    help="CSV rows: files not stored, or every study (Study Instance UID, accession, "
    "modality, instances planned / stored / failed / skipped, complete).",
)
@opt(
    "--output",
    "-o",
    env="REPORT_OUTPUT",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write here instead of standard output (replaced atomically).",
)
@opt(
    "--no-file-list",
    env="REPORT_NO_FILE_LIST",
    is_flag=True,
    help="JSON without the per-file list (for jobs of millions of files; the CSV lists "
    "the files not stored).",
)
def report_command(
    job: str | None,
    redis_url: str | None,
    state_dir: str,
    fmt: str | None,
    by: str,
    output: str | None,
    no_file_list: bool,
) -> None:
    """Report on a job from its ledger: totals, failures by DICOM status, SOP classes,
    syntaxes, throughput, workers, C-STORE latency.

    Every format has the per-study table (which studies are complete?). Works while the
    job runs (files without an outcome are reported as in flight), from the state
    directory of `migrator run` (JOB: an id, the start of one, or the last job) or from any
    machine pointed at a cluster's Redis. Secrets in the job's configuration are masked.

    \b
    Examples:
      migrator report -o job.html                       # the last job; charts, no network
      migrator report job-3f2a9c01de --format csv --by study -o studies.csv
      migrator report job-3f2a9c01de --redis-url redis://redis:6379/0
      migrator report job-3f2a9c01de --format csv -o not-stored.csv
      migrator report job-3f2a9c01de --format json | jq .totals

    Exit codes: 0 report made (whatever the job's state); 2 unknown job or bad
    arguments; 3 Redis unreachable.
    """
    import redis

    from migrator.report import format_for_path, from_ledger, render, write_atomic

    fmt = fmt or (format_for_path(output, default="text") if output else "text")
    if by == "study" and fmt != "csv":
        fail_config("--by study is for --format csv (every format has the study table)")
    with job_ledger(redis_url, state_dir, job, "report") as (ledger, jobs):
        try:
            data = from_ledger(ledger, keep_files=fmt == "json" and not no_file_list)
        except redis.RedisError as exc:  # the server went away after the first contact
            click.echo(
                f"migrator: error: reading job {ledger.job_id} from {jobs.where}: {exc}", err=True
            )
            raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    if by == "study":
        from migrator.report import csvfmt

        content = csvfmt.render_studies(data)
    else:
        content = render(data, fmt)
    if output is None:
        click.echo(content, nl=False)
        return
    try:
        write_atomic(output, content)
    except OSError as exc:
        fail_config(f"cannot write {output}: {exc}")
    click.echo(f"{data.job}: {fmt} report written to {output}", err=True)
