#!/usr/bin/env bash
# Makes a fresh Debian or Ubuntu machine ready for strata and its tests: installs the
# Debian packages they use (the list and why each: README.md, "On a fresh machine"),
# then the npm dependencies (`npm ci`, Node 24 included). Run as root; running it
# again changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  util-linux mount coreutils   # unshare, setpriv, mount, umount, losetup, chroot: every step's sandbox, and the tests' mounts
  iproute2 iputils-ping        # ip netns, veth, tc and ping: the multi-host test cluster (scripts/netns.ts)
  e2fsprogs                    # mkfs.ext4: the full-disk test and the benchmarks' scratch filesystem
  tar zstd curl ca-certificates # the HTTP-cache baseline of the benchmarks; https for curl and npm
  python3 make g++             # node-gyp builds @strata/sys, the one native module
  dnsmasq-base                 # a real DNS server for the discovery test (test/discovery-netns.test.ts)
  systemd                      # systemd-analyze verify checks the unit in deploy/systemd
)

fail () {
  echo "scripts/setup.sh: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || fail "run it as root (sudo scripts/setup.sh): it installs Debian packages, and strata's steps and tests mount filesystems"
command -v apt-get >/dev/null || fail "apt-get not found: this script knows Debian and Ubuntu only; install the equivalents of ${PACKAGES[*]}, then run npm ci"
command -v npm >/dev/null || fail "npm not found: install Node.js with npm (any version; npm ci then installs Node 24 for the project)"

missing=()
for p in "${PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "scripts/setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export TURBO_TELEMETRY_DISABLED=1
npm ci --no-audit --no-fund
