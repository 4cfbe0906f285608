"""``migrator verify``: does the PACS hold what the ledger says was stored?"""

from __future__ import annotations

import json
from typing import Any

import click

from migrator.commands.common import AE, opt, setup_logging
from migrator.commands.jobstate import job_ledger, redis_option, state_dir_option
from migrator.exitcodes import ExitStatus

_LISTED = 100  # missing files printed in text mode; --json and the ledger have them all


@click.command("verify")
@click.argument("job", required=False)
@redis_option
@state_dir_option
@opt(
    "--sample",
    env="VERIFY_SAMPLE",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="Studies whose instance count matches that are still compared instance by "
    "instance (C-FIND at IMAGE level). Studies whose count differs always are.",
)
@opt("--full", env="VERIFY_FULL", is_flag=True, help="Compare every study instance by instance.")
@opt(
    "--commitment",
    env="VERIFY_COMMITMENT",
    is_flag=True,
    help="Also ask for Storage Commitment (N-ACTION, then wait for the N-EVENT-REPORT). The "
    "PACS must know our calling AE with our host and --commitment-port.",
)
@opt(
    "--commitment-port",
    env="VERIFY_COMMITMENT_PORT",
    type=click.IntRange(1, 65535),
    default=None,
    help="Listen here for the PACS's reverse association carrying the report (without it, "
    "only a report on the requesting association is received).",
)
@opt(
    "--commitment-bind",
    env="VERIFY_COMMITMENT_BIND",
    default="0.0.0.0",
    show_default=True,
    help="Address to listen on for that reverse association.",
)
@opt(
    "--commitment-batch",
    env="VERIFY_COMMITMENT_BATCH",
    type=click.IntRange(1, 100000),
    default=1000,
    show_default=True,
    help="SOP instances per N-ACTION.",
)
@opt(
    "--commitment-timeout",
    env="VERIFY_COMMITMENT_TIMEOUT",
    type=click.FloatRange(0.1),
    default=120.0,
    show_default=True,
    help="Seconds to wait without any new report before giving up.",
)
@opt(
    "--called-ae",
    env="VERIFY_CALLED_AE",
    type=AE,
    default=None,
    help="Query this AE title instead of the job's destination AE (a separate Q/R AE).",
)
@opt(
    "--port",
    env="VERIFY_PORT",
    type=click.IntRange(1, 65535),
    default=None,
    help="Query this port instead of the job's destination port.",
)
@opt(
    "--qido-page",
    env="VERIFY_QIDO_PAGE",
    type=click.IntRange(1, 100000),
    default=1000,
    show_default=True,
    help="(DICOMweb destination) Results asked for per QIDO-RS request (limit); lists are "
    "read with offset until an empty page, so a server that caps pages lower loses nothing.",
)
@opt(
    "--against-source",
    env="VERIFY_AGAINST_SOURCE",
    default=None,
    metavar="dimse://AE@HOST:PORT",
    help="Reconcile with this old PACS's inventory (C-FIND, our --source-calling-ae) instead "
    "of the dimse:// source the job was planned from; e.g. a job planned from an export "
    "of that archive. E.g. --against-source dimse://OLDPACS@old-pacs:104",
)
@opt(
    "--ledger-only",
    env="VERIFY_LEDGER_ONLY",
    is_flag=True,
    help="Compare the destination with the ledger only: do not ask the job's dimse:// "
    "source what it holds.",
)
@opt("--json", "as_json", env="VERIFY_JSON", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for protocol details).")
def verify_command(
    job: str | None,
    redis_url: str | None,
    state_dir: str,
    sample: int,
    full: bool,
    commitment: bool,
    commitment_port: int | None,
    commitment_bind: str,
    commitment_batch: int,
    commitment_timeout: float,
    called_ae: str | None,
    port: int | None,
    qido_page: int,
    against_source: str | None,
    ledger_only: bool,
    as_json: bool,
    verbose: int,
) -> None:
    """Ask the destination PACS which of the job's stored files it holds.

    A C-STORE answered with success does not prove storage (a PACS may keep an older
    duplicate or discard an instance and still say success). This queries the PACS: C-FIND
    at STUDY level for the number of instances of every study, then at IMAGE level for
    studies whose count differs (naming each missing SOP Instance UID with its source) and
    for a sample of the others; with --commitment, also Storage Commitment. A job sent to a
    DICOMweb destination (--dicomweb) is asked the same over QIDO-RS at its root URL (studies,
    then series and instances, paged with limit/offset), with the job's credential files.
    The result is stored in the ledger for reports; running it again replaces it.

    A job planned from an old PACS (dimse://) is also reconciled with the source's
    inventory: per study, the instances at the source (C-FIND), stored per the ledger and
    at the destination; instances at the source missing at the destination (`migrator
    retry JOB --missing` sends them) and extra ones are named by UID. --against-source
    reconciles any job with a given old PACS; --ledger-only skips the source.

    \b
    Examples:
      migrator verify                              # the last job of the state directory
      migrator verify job-3f2a9c01de --redis-url redis://redis:6379/0
      migrator verify job-3f2a9c01de --full --json > verify.json
      migrator verify job-3f2a9c01de --commitment --commitment-port 11113
      migrator verify job-3f2a9c01de --against-source dimse://OLDPACS@old-pacs:104

    Exit codes: 0 every stored file confirmed (and nothing at the source missing at the
    destination); 1 one or more missing or unconfirmed;
    2 bad arguments; 3 the PACS (or Redis) cannot be reached or refuses to answer;
    4 the PACS rejected the association (DICOMweb: refused our credentials, 401/403).
    """
    from dataclasses import replace

    from migrator.errors import AssociationRejected, ConfigError, ConnectError
    from migrator.settings import Settings
    from migrator.verify import CommitmentSettings, PacsQueryError, save_result, verify_job
    from migrator.verify.qido import CredentialsRefused
    from migrator.verify.reconcile import reconcile_job, save_reconciliation

    setup_logging(verbose, False)
    if against_source and ledger_only:
        click.echo("✗ verify: --against-source and --ledger-only exclude each other", err=True)
        raise SystemExit(int(ExitStatus.BAD_CONFIG))
    if against_source:
        from migrator.sources.dimse import source_root

        try:
            against_source = source_root(against_source)
        except ConfigError as exc:
            click.echo(f"✗ verify: --against-source {exc}", err=True)
            raise SystemExit(int(ExitStatus.BAD_CONFIG)) from None
    reconciled = None
    with job_ledger(redis_url, state_dir, job, "verify") as (ledger, _):
        job = ledger.job_id
        config = Settings.from_dict(ledger.config())
        if config.dicomweb is not None:
            _dicomweb_usage(job, commitment=commitment, called_ae=called_ae, port=port)
        config = replace(config, called_ae=called_ae or config.called_ae, port=port or config.port)
        settings = None
        if commitment:
            settings = CommitmentSettings(
                listen_host=commitment_bind,
                listen_port=commitment_port,
                batch=commitment_batch,
                timeout=commitment_timeout,
            )
        try:
            result = verify_job(
                ledger, config, sample=sample, full=full, commitment=settings, qido_page=qido_page
            )
            if not ledger_only:
                reconciled = reconcile_job(
                    ledger, config, source=against_source, sample=sample, full=full
                )
        except ConfigError as exc:  # an unreadable credentials file
            click.echo(f"✗ verify {job}: {exc}", err=True)
            raise SystemExit(int(ExitStatus.BAD_CONFIG)) from None
        except (AssociationRejected, CredentialsRefused) as exc:
            click.echo(f"✗ verify {job}: {exc}", err=True)
            raise SystemExit(int(ExitStatus.ASSOCIATION_REJECTED)) from None
        except (ConnectError, PacsQueryError) as exc:
            click.echo(f"✗ verify {job}: {exc}", err=True)
            raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
        except OSError as exc:  # the commitment listener could not bind its port
            click.echo(f"✗ verify {job}: cannot listen for storage commitment: {exc}", err=True)
            raise SystemExit(int(ExitStatus.BAD_CONFIG)) from None
        save_result(ledger, result)
        if reconciled is not None:
            save_reconciliation(ledger, reconciled)
    if as_json:
        data = result.to_json()
        if reconciled is not None:
            data["reconciliation"] = reconciled.to_json()
        click.echo(json.dumps(data, indent=2))
    else:
        _print_text(result.to_json())
        if reconciled is not None:
            _print_reconciliation(reconciled.to_json(), job)
    status = result.exit_status
    if reconciled is not None:
        status = max(status, reconciled.exit_status)
    raise SystemExit(int(status))


def _dicomweb_usage(job: str, *, commitment: bool, called_ae: str | None, port: int | None) -> None:
    """Options that only mean something for DIMSE: a usage error rather than ignored."""
    given = [
        name
        for name, on in (("--commitment", commitment), ("--called-ae", called_ae), ("--port", port))
        if on
    ]
    if given:
        click.echo(
            f"✗ verify {job}: {', '.join(given)}: DIMSE only; this job's destination is "
            "DICOMweb (verified over QIDO-RS at its URL)",
            err=True,
        )
        raise SystemExit(int(ExitStatus.BAD_CONFIG))


def _print_text(data: dict[str, Any]) -> None:
    click.echo(
        f"{data['job']} → {data['destination']}: {data['method']}, {data['studies']} studies "
        f"counted, {data['studies_listed']} listed instance by instance "
        f"({data['seconds']:.1f} s)"
    )
    click.echo(
        f"  stored per ledger: {data['stored']} files ({data['instances']} distinct instances)"
    )
    click.echo(f"  confirmed by PACS: {data['confirmed']}")
    if data["method"].endswith("+commitment"):
        click.echo(f"  committed by PACS: {data['committed']} instances")
    if data["in_flight"]:
        click.echo(f"  ⚠ {data['in_flight']} files still in flight were not checked")
    for study in data["mismatched_studies"]:
        click.echo(
            f"  study {study['study_uid']}: {study['ledger']} per ledger, {study['pacs']} at PACS"
        )
    for label, key in (("missing", "missing_files"), ("unconfirmed", "unconfirmed_files")):
        files = data[key]
        if not files:
            continue
        click.echo(f"  {label}: {len(files)}")
        for f in files[:_LISTED]:
            click.echo(f"    {f['sop_instance_uid']}  {f['uri']}  ({f['reason']})")
        if len(files) > _LISTED:
            click.echo(f"    … and {len(files) - _LISTED} more (--json lists them all)")
    if data["missing"] or data["unconfirmed"]:
        click.echo(
            f"✗ {data['missing']} missing, {data['unconfirmed']} unconfirmed "
            f"of {data['stored']} stored files"
        )
    else:
        click.echo(f"✓ all {data['stored']} stored files confirmed by the PACS")


def _print_reconciliation(data: dict[str, Any], job: str) -> None:
    """The source's inventory against the destination: UIDs, accessions and counts only."""
    click.echo(
        f"reconciled with {data['source']}: {data['studies']} studies, "
        f"{data['studies_differing']} differing, {data['studies_listed']} listed instance by "
        f"instance ({data['seconds']:.1f} s)"
    )
    click.echo(
        f"  instances at source: {data['at_source']}, stored per ledger: {data['stored']}, "
        f"at destination: {data['at_destination']}"
    )
    for row in data["studies_table"]:
        if row["at_source"] == row["stored"] == row["at_destination"]:
            continue
        accession = f" (accession {row['accession']})" if row["accession"] else ""
        click.echo(
            f"  study {row['study_uid']}{accession}: {row['at_source']} at source, "
            f"{row['stored']} stored, {row['at_destination']} at destination"
        )
    missing = data["missing_instances"]
    if missing:
        click.echo(f"  missing at the destination: {len(missing)}")
        for m in missing[:_LISTED]:
            planned = f"file {m['file_id']}" if m["file_id"] else "not planned: new at the source"
            click.echo(f"    {m['sop_instance_uid']}  study {m['study_uid']}  ({planned})")
        if len(missing) > _LISTED:
            click.echo(f"    … and {len(missing) - _LISTED} more (--json lists them all)")
    extra = data["extra_instances"]
    if extra:
        click.echo(f"  extra at the destination (not at the source): {len(extra)}")
        for e in extra[:_LISTED]:
            click.echo(f"    {e['sop_instance_uid']}  study {e['study_uid']}")
    if missing:
        n = len(missing)
        click.echo(
            f"✗ {n} instance{'s' if n > 1 else ''} at the source missing at the destination "
            f"(`migrator retry {job} --missing` sends {'them' if n > 1 else 'it'})"
        )
    else:
        click.echo(f"✓ every instance at the source is at the destination ({data['source']})")
