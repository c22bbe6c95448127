#!/usr/bin/env bash
# Install the Mosquitto broker from Debian when it is missing (tests and the demo use it as the
# local stand-in for AWS IoT Core). Needs root or sudo; otherwise says what to run.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "mosquitto is missing and this is not a Debian-like system: install it with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "mosquitto is missing: run 'apt-get install mosquitto' as root" >&2
    exit 1
  fi
fi
echo "installing mosquitto from Debian..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
# Debian's package may start a system broker on port 1883; tests start their own on free ports.
