#!/usr/bin/env bash
# Shared set-up for scripts/demo and scripts/test: system packages, .venv, the project with [dev].
# Idempotent: a second run installs nothing new. Source it or run it; `WITH_BROWSER=1` also installs Chromium.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '==> %s\n' "$*" >&2; }

apt_install() {
    # Install Debian packages when missing (root, or passwordless sudo).
    local missing=("$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    local SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
            say "please install: ${missing[*]} (needs root)"; return 1; fi
    fi
    say "installing ${missing[*]} with apt-get"
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    say "Python >= 3.11 is required (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11"; exit 2; }

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn  >/dev/null || need+=(maven)
if [ "${WITH_BROWSER:-0}" = "1" ] && ! command -v chromium >/dev/null; then need+=(chromium fonts-liberation); fi
apt_install "${need[@]+"${need[@]}"}"

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    say "installing clickstream-workbench[dev] into .venv (first run takes a few minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    rm -f .venv/.installed-* && touch "$stamp"
fi
