"""Where files come from: local disk, S3 prefixes, bytes in memory."""
