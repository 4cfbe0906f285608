#!/usr/bin/env bash
# Install everything pacs-migrator needs on a fresh Debian machine, idempotently:
# Debian packages (DCMTK, Orthanc, redis-server) when missing, then a venv in .venv with the
# project installed in editable mode. Re-running it is cheap: each step is skipped when done.
#   bash scripts/bootstrap.sh          # runtime + test peers
#   bash scripts/bootstrap.sh --dev    # + test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dev=0
[ "${1:-}" = "--dev" ] && dev=1

need_apt=()
command -v storescp >/dev/null 2>&1 || need_apt+=(dcmtk)
{ command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } || need_apt+=(orthanc)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${need_apt[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q >&2
  "${sudo_cmd[@]}" apt-get install -y -q -o DPkg::Lock::Timeout=600 "${need_apt[@]}" >&2
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$py" -m venv .venv
fi
# Reinstall only when pyproject.toml changed (or the dev extra is newly wanted).
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)-$dev"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages" >&2
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip >&2
  if [ $dev -eq 1 ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e "$root[dev]" >&2
  else
    .venv/bin/pip install -q --disable-pip-version-check -e "$root" >&2
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
