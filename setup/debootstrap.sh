#!/bin/bash
# Configure Debian's ganeti-instance-debootstrap (the OS `debootstrap`) so that
# `gnt-instance add -o debootstrap+default` makes a guest Haven can boot, through the
# OS's own configuration file, never by changing the package:
#
#   SUITE            the host's Debian release (the package's default, jessie, is gone
#                    from the mirrors: 404)
#   PARTITION_STYLE  none: the file system on the whole disk (root=/dev/vda).  The
#                    package's default, msdos, maps the partition with kpartx, which
#                    needs device-mapper (absent in containers and on hosts without
#                    dm_mod); `none` only needs losetup
#   EXTRA_PKGS       linux-image-cloud-ARCH: the image carries its own kernel and
#                    initrd, which Haven boots directly (no boot loader in the image)
#
# Only variables the administrator has not set in /etc/default/ganeti-instance-debootstrap
# are added, in one marked block; a second run changes nothing.  When EXTRA_PKGS is added,
# an existing package cache for the suite is removed: the cache is named by suite and
# architecture only and would give new instances an image without the kernel.
#
#   setup/debootstrap.sh [CONFIG_FILE [CACHE_DIR]]     (defaults: the package's paths)
set -euo pipefail

CONF=${1:-/etc/default/ganeti-instance-debootstrap}
CACHE_DIR=${2:-/var/cache/ganeti-instance-debootstrap}
MARK="# Haven (setup/debootstrap.sh): what an instance needs to be created and booted here"

log() { echo "setup/debootstrap: $*" >&2; }

if [ ! -d /usr/share/ganeti/os/debootstrap ] && [ "$#" -eq 0 ]; then
    log "ganeti-instance-debootstrap is not installed; nothing to configure"
    exit 0
fi

arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
suite=bookworm
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}" || true)
    [ -n "$codename" ] && suite=$codename
fi

# Is VAR assigned outside comments (by the administrator or an earlier run)?
is_set() { [ -f "$CONF" ] && grep -Eq "^[[:space:]]*(export[[:space:]]+)?$1=" "$CONF"; }

add=()
is_set SUITE || add+=("SUITE=\"$suite\"")
is_set PARTITION_STYLE || add+=("PARTITION_STYLE=\"none\"")
added_pkgs=0
if ! is_set EXTRA_PKGS; then
    add+=("EXTRA_PKGS=\"linux-image-cloud-$arch\"")
    added_pkgs=1
fi

if [ "${#add[@]}" -eq 0 ]; then
    exit 0
fi
mkdir -p "$(dirname "$CONF")"
{
    [ -s "$CONF" ] && echo
    echo "$MARK"
    printf '%s\n' "${add[@]}"
} >>"$CONF"
log "added to $CONF: ${add[*]}"

if [ "$added_pkgs" = 1 ]; then
    suite_now=$(set +u; SUITE=""; . "$CONF" >/dev/null 2>&1; echo "${SUITE:-jessie}")
    stale="$CACHE_DIR/cache-$suite_now-$arch.tar"
    if [ -f "$stale" ]; then
        rm -f "$stale"
        log "removed $stale (made without EXTRA_PKGS; the next create rebuilds it)"
    fi
fi
