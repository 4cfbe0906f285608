"""Objects in S3 or an S3-compatible store (SeaweedFS, MinIO, Ceph RGW, moto).

The package: :mod:`~migrator.sources.s3.source` (``S3Source``: listing page by page, fetching
one object at a time pinned to the ETag and size seen at listing time),
:mod:`~migrator.sources.s3.settings` (``S3Settings``, ``parse_s3_uri``) and
:mod:`~migrator.sources.s3.boto_errors` (boto3/botocore failures mapped into the migrator's
error tree with messages safe to log).
"""

from __future__ import annotations

from migrator.sources.s3.settings import S3Settings, parse_s3_uri
from migrator.sources.s3.source import S3Source

__all__ = ["S3Settings", "S3Source", "parse_s3_uri"]
