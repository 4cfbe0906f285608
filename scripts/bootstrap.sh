#!/usr/bin/env bash
# Install everything pacs-migrator needs on a fresh Debian machine, idempotently:
# Debian packages (DCMTK, Orthanc, redis-server; Chromium and orthanc-dicomweb with --dev) when missing, then a
# venv in .venv with the project installed in editable mode. Re-running it is cheap: each
# step is skipped when done.
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
# The fleet tests (tests/fleet/) build hosts from network namespaces: `ip netns` and a bridge
# (iproute2), partitions as drop rules inside a namespace (nftables).
[ $dev -eq 1 ] && { command -v ip >/dev/null 2>&1 || need_apt+=(iproute2); }
[ $dev -eq 1 ] && { command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need_apt+=(nftables); }
# Orthanc's DICOMweb plugin: the STOW-RS destination's tests send into it.
[ $dev -eq 1 ] && { [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb); }
# Headless Chromium opens the HTML report in the tests; not needed to run migrations.
[ $dev -eq 1 ] && { command -v chromium >/dev/null 2>&1 || need_apt+=(chromium); }
# Debian's docker-compose checks compose/ offline in the tests (`config`: no engine needed).
[ $dev -eq 1 ] && { command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose); }
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
# Reinstall only when pyproject.toml changed, or the dev extra is wanted and not installed
# (an install with the dev extra also satisfies a plain one).
# ("-c": the editable install is a plain path in a .pth file, see below)
hash=$(sha1sum pyproject.toml | cut -c1-12)-c
if [ ! -f ".venv/.installed-$hash-1" ] && { [ $dev -eq 1 ] || [ ! -f ".venv/.installed-$hash-0" ]; }; then
  echo "bootstrap: installing Python packages (log: .venv/pip.log)" >&2
  target="$root"
  [ $dev -eq 1 ] && target="$root[dev]"
  if ! { .venv/bin/pip install -q --disable-pip-version-check --upgrade pip &&
         # compat: a path in a .pth file instead of setuptools' import finder, which costs
         # every `migrator` command ~10 ms of start-up (pathlib, importlib.util).
         .venv/bin/pip install -q --disable-pip-version-check -e "$target" \
           --config-settings editable_mode=compat; } >.venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    echo "bootstrap: pip install failed" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch ".venv/.installed-$hash-$dev"
fi
# Byte-compile our own code (only what changed since the last time): with
# PYTHONDONTWRITEBYTECODE set, as on these machines, every `migrator` command and worker
# would otherwise compile each module from source at every start (~40 ms of `store`'s
# ~150 ms). The import system still reads .pyc files when it may not write them.
.venv/bin/python -m compileall -q -j 0 migrator workers >/dev/null
