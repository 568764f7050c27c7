#!/usr/bin/env bash
# Installs what the tests need (Debian tools, Python deps), then lints, type-checks and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(netcat-openbsd socat rsync b3sum iproute2 nftables man-db groff-base time openssh-client openssh-server coturn tmux)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
ruff check .
ruff format --check .
mypy rtransfer
python3 -m pytest "$@"
