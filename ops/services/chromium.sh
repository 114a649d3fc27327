#!/usr/bin/env bash
# Headless Chromium for the tests that render the pages Omni serves (the printable invoice): Debian's
# `chromium` package, installed when missing (as root, or with sudo). Nothing runs in the background.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || die "chromium is missing and installing it needs root (apt-get install chromium)"
  sudo bash "$0"; exit
fi
apt_install chromium
command -v chromium >/dev/null || die "chromium did not install"
