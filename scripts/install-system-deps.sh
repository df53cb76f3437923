#!/usr/bin/env bash
# Install the Debian packages the test suite needs, only if they are missing.
#
#   scripts/install-system-deps.sh            # the default set (see DEFAULT_PACKAGES)
#   scripts/install-system-deps.sh make git   # exactly these packages
#
# Idempotent: when everything is present it changes nothing and runs no `apt-get update`.
# Runs apt as root directly, or through sudo when not root. Environment:
#   PYTHON  interpreter the virtualenv is made with (default python3.11); when it is Debian's and
#           cannot make a venv, python3.11-venv is added to the list.
set -euo pipefail

# chromium + chromium-driver: headless browser tests (Playwright drives Debian's Chromium; no
# browser download is possible or wanted). postgresql: initdb/pg_ctl for the throwaway clusters
# of the PostgreSQL tests (tests/support/postgres.py). orthanc + orthanc-dicomweb: the throwaway PACS
# of the hospital-integration tests (tests/support/orthanc.py); dicom3tools: `dciodvfy`, which the
# tests run on every DICOM object cxr-review writes.
DEFAULT_PACKAGES=(chromium chromium-driver postgresql orthanc orthanc-dicomweb dicom3tools)

log() { printf 'install-system-deps: %s\n' "$*"; }

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

if [[ $# -gt 0 ]]; then
    wanted=("$@")
else
    wanted=("${DEFAULT_PACKAGES[@]}")
    python="${PYTHON:-python3.11}"
    # Debian splits ensurepip out of the interpreter; without it `python3.11 -m venv` fails.
    if command -v "$python" >/dev/null && ! "$python" -c 'import ensurepip' 2>/dev/null; then
        wanted+=("$(basename "$python")-venv")
    fi
fi

if ! command -v dpkg-query >/dev/null; then
    log "not a Debian system; make sure these are installed yourself: ${wanted[*]}"
    exit 0
fi

missing=()
for pkg in "${wanted[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    log "all present: ${wanted[*]}"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null; then
    as_root=(sudo)
else
    log "missing: ${missing[*]}; not root and no sudo, install them as root:"
    log "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log "missing: ${missing[*]}"
log "running: ${as_root[*]:+${as_root[*]} }apt-get update"
"${as_root[@]}" apt-get update -q
log "running: ${as_root[*]:+${as_root[*]} }apt-get install -y --no-install-recommends ${missing[*]}"
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
log "installed: ${missing[*]}"
