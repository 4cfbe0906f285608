#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, lints, type-checks, tests.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k store   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
echo "== ruff" >&2
# (only the folders that exist: bench/ may be empty on a fresh clone)
lint_dirs=()
for d in migrator workers tests bench scripts; do [ -d "$d" ] && lint_dirs+=("$d"); done
.venv/bin/ruff check "${lint_dirs[@]}"
echo "== mypy (strict on migrator/ and workers/)" >&2
.venv/bin/mypy
echo "== pytest" >&2
exec .venv/bin/pytest "$@"
