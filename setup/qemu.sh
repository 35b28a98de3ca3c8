#!/usr/bin/env bash
# QEMU 10 on Debian 12, from Debian's own bookworm-backports.
#
# Why not Debian 12's QEMU 7.2: under TCG (no working KVM, as on the test machines) a
# live migration with 7.2 loses memory writes of a guest that keeps writing (6 of 6 runs
# broken, 10.0.2 none of 8: ../shared/notes/tcg-live-migration-integrity.md), so Haven
# would have to pause every guest for the whole copy.  Haven still runs on 7.2 (and picks
# non-live migration there by itself); this only makes the test and demo machine current.
# Idempotent: nothing happens when QEMU >= 10 is installed already or on another release.
set -euo pipefail

have=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
if [ -n "$have" ] && dpkg --compare-versions "$have" ge 1:10; then
    exit 0
fi
. /etc/os-release
if [ "${VERSION_CODENAME:-}" != bookworm ]; then
    exit 0  # newer releases ship QEMU >= 10 themselves; the apt step installed it
fi
if ! grep -rqsE "^[^#]*bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat >/etc/apt/sources.list.d/haven-bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
echo "Installing QEMU 10 from bookworm-backports (Debian 12's 7.2 is unsafe for live migration under TCG)"
apt-get update -qq
pkgs=(qemu-system-x86 qemu-utils qemu-system-common qemu-system-data)
# Installed companions of the 7.2 packages must move with them (exact-version deps).
for p in qemu-block-extra qemu-system-gui qemu-system-modules-spice; do
    dpkg -s "$p" >/dev/null 2>&1 && pkgs+=("$p")
done
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports "${pkgs[@]}" >/dev/null
qemu-system-x86_64 --version | head -1
