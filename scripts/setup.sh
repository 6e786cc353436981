#!/usr/bin/env bash
# Create .venv (if needed) and install the project with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip, not uv/poetry: pip takes torch from the local wheel cache where one exists.
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e ".[test]"

# --with-browser (scripts/test.sh passes it): headless Chromium and its driver for the dashboard's
# browser test (tests/ui/), from Debian's packages: a browser downloaded by a tool (Playwright,
# Selenium Manager) cannot work offline. Best effort: without them that test skips, saying why.
if [ "${1:-}" = "--with-browser" ] && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1; then
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver; } \
      >/dev/null 2>&1 || echo "setup: could not install chromium + chromium-driver; the browser test will skip" >&2
  else
    echo "setup: no apt-get; install Chromium and chromedriver for the browser test (it skips without them)" >&2
  fi
fi

# The full Fashion-MNIST (70,000 images, MIT licence) from Debian's dataset-fashion-mnist: the
# 'fashion_mnist' dataset reads its IDX files offline (core/data/datasets.py). Best effort: without
# apt the loader falls back to torchvision (download: true) and its tests skip, saying why.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1; then
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist; } \
      >/dev/null 2>&1 || echo "setup: could not install dataset-fashion-mnist; fashion_mnist needs download: true" >&2
  else
    echo "setup: no apt-get; fashion_mnist needs download: true (or Debian's dataset-fashion-mnist)" >&2
  fi
fi
