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
#                    initrd, which Haven boots directly (no boot loader in the image);
#                    dbus: without it systemd-logind does not run and the guest ignores
#                    the ACPI power button (gnt-instance shutdown would wait its timeout)
#
# Only variables the administrator has not set in /etc/default/ganeti-instance-debootstrap
# go into one marked block at its end, which this script owns: a later run rewrites that
# block (and nothing else) if Haven's choice changed, and changes nothing otherwise.  When
# the effective EXTRA_PKGS change, the package's cache for the suite is removed:
# it is named by suite and architecture only and would give new instances an image made
# with the old package list.
#
#   setup/debootstrap.sh [CONFIG_FILE [CACHE_DIR]]     (defaults: the package's paths)
set -euo pipefail

CONF=${1:-/etc/default/ganeti-instance-debootstrap}
CACHE_DIR=${2:-/var/cache/ganeti-instance-debootstrap}
BEGIN="# BEGIN Haven (setup/debootstrap.sh rewrites this block; set a variable above it to override)"
END="# END Haven"

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

old=""
[ -f "$CONF" ] && old=$(cat "$CONF")
# The file without Haven's block: what the administrator (or the package) wrote.
admin=$(printf '%s\n' "$old" | sed "/^$(printf '%s' "$BEGIN" | sed 's/[][\/.*^$]/\\&/g')\$/,/^$END\$/d")
is_set() { printf '%s\n' "$admin" | grep -Eq "^[[:space:]]*(export[[:space:]]+)?$1="; }

block=()
is_set SUITE || block+=("SUITE=\"$suite\"")
is_set PARTITION_STYLE || block+=("PARTITION_STYLE=\"none\"")
is_set EXTRA_PKGS || block+=("EXTRA_PKGS=\"linux-image-cloud-$arch,dbus\"")

new=$admin  # $(...) dropped its trailing blank lines
if [ "${#block[@]}" -gt 0 ]; then
    new=$(printf '%s\n\n%s\n%s\n%s' "$new" "$BEGIN" "$(printf '%s\n' "${block[@]}")" "$END")
    new=${new#$'\n\n'}
fi
if [ "$new" = "$old" ]; then
    exit 0
fi

# What the package's create script would use, before and after.
effective() { (set +eu; SUITE=""; EXTRA_PKGS=""; eval "$1" >/dev/null 2>&1
               [ "$2" = SUITE ] && echo "${SUITE:-jessie}" || echo "$EXTRA_PKGS"); }
before=$(effective "$old" EXTRA_PKGS)
after=$(effective "$new" EXTRA_PKGS)

mkdir -p "$(dirname "$CONF")"
printf '%s\n' "$new" >"$CONF.haven-tmp"
mv -f "$CONF.haven-tmp" "$CONF"
log "set in $CONF: ${block[*]:-(nothing: the administrator set everything)}"

if [ "$before" != "$after" ]; then
    stale="$CACHE_DIR/cache-$(effective "$new" SUITE)-$arch.tar"
    if [ -f "$stale" ]; then
        rm -f "$stale"
        log "removed $stale (made with other packages; the next create rebuilds it)"
    fi
fi
