#!/usr/bin/env bash
# Install the Debian packages the tests and the demo need when they are missing:
# - mosquitto: the local stand-in for AWS IoT Core;
# - poppler-utils (pdftoppm): the IQ report test renders the PDF's first page to an image;
# - fuse3 (fusermount3, libfuse3): the power-loss tests mount their own file system (tests/powerloss).
# Needs root or sudo; otherwise says what to run.
set -euo pipefail
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${missing[*]}, and this is not a Debian-like system: install them with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "missing: ${missing[*]}: run 'apt-get install ${missing[*]}' as root" >&2
    exit 1
  fi
fi
echo "installing ${missing[*]} from Debian..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's mosquitto package may start a system broker on port 1883; tests start their own on free ports.
