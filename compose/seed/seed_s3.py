"""Seed the demo S3 server with a synthetic DICOM archive (compose/ and k8s/overlays/dev).

Run in the pacs-migrator image (it is copied to /opt/migrator/demo/seed_s3.py):

    python /opt/migrator/demo/seed_s3.py --endpoint http://s3:9000 --bucket demo \\
        --prefix archive/ --count 500

The endpoint defaults to MIGRATOR_S3_ENDPOINT, the variable the planner and the workers use.

Waits for the S3 server (up to --wait seconds), creates the bucket if needed and uploads
``--count`` synthetic files (``migrator.synth``, 10 KB each, about 100 per study) under
``--prefix``. Idempotent: the same seed gives the same files under the same keys, so running
it again overwrites them with identical bytes and a migration sends nothing new.
Credentials come from the standard AWS environment (AWS_ACCESS_KEY_ID, ...). Every option can
also be given as SEED_<OPTION> (SEED_ENDPOINT, SEED_BUCKET, SEED_PREFIX, SEED_COUNT, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SEED_{name}", default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--endpoint",
        default=_env("ENDPOINT", os.environ.get("MIGRATOR_S3_ENDPOINT", "")) or None,
        help="S3 endpoint URL (default: $MIGRATOR_S3_ENDPOINT; none: AWS)",
    )
    p.add_argument("--region", default=_env("REGION", "us-east-1"))
    p.add_argument("--bucket", default=_env("BUCKET", "demo"))
    p.add_argument("--prefix", default=_env("PREFIX", "archive/"))
    p.add_argument("--count", type=int, default=int(_env("COUNT", "500")))
    p.add_argument("--size", default=_env("SIZE", "tiny"), help="tiny | small | medium | large")
    p.add_argument("--seed", type=int, default=int(_env("SEED", "1")))
    p.add_argument("--wait", type=float, default=float(_env("WAIT", "120")))
    return p.parse_args(argv)


def s3_client(endpoint: str | None, region: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


def wait_for_s3(client: Any, deadline: float) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    while True:
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"seed: S3 not reachable: {exc}") from None
            time.sleep(1.0)


def ensure_bucket(client: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from migrator import synth

    client = s3_client(args.endpoint, args.region)
    wait_for_s3(client, time.monotonic() + args.wait)
    ensure_bucket(client, args.bucket)
    prefix = args.prefix if not args.prefix or args.prefix.endswith("/") else args.prefix + "/"
    with tempfile.TemporaryDirectory(prefix="seed-") as tmp:
        paths = synth.write_corpus(Path(tmp), count=args.count, size=args.size, seed=args.seed)
        total = 0
        for path in paths:
            client.upload_file(str(path), args.bucket, f"{prefix}{path.name}")
            total += path.stat().st_size
    where = args.endpoint or "AWS S3"
    target = f"s3://{args.bucket}/{prefix}"
    print(f"seed: {len(paths)} files ({total / 1e6:.1f} MB) in {target} at {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
