#!/bin/bash
# Build Haven's test guest: a Debian cloud kernel plus a busybox initramfs.
#
#   guest/build-guest.sh [--force]
#
# Output, in ${HAVEN_GUEST_DIR:-/var/cache/haven/guest}:
#   vmlinuz    the kernel of the package linux-image-cloud-amd64 depends on
#   initrd.gz  busybox-static, the virtio (+ ACPI button) modules in dependency order,
#              the static guest tools (ticker, diskw, memhog) built from guest/tools/*.c
#   VERSION    kernel=, package=, inputs= (a hash of every input: a change rebuilds)
#
# Idempotent: when VERSION matches the inputs it exits at once.  Concurrent runs are
# serialised by a lock in the output directory.  Environment:
#   HAVEN_GUEST_DIR    output directory
#   HAVEN_KERNEL_DEB   use this kernel .deb instead of asking apt (offline builds)
#
# The guest (kernel command line, all optional):
#   haven.ip=ADDR/PREFIX haven.gw=GW   configure eth0 (lo and eth0 are always brought up)
#   haven.hostname=NAME                else /mnt/etc/hostname if the disk has one
#   haven.nomount                      do not mount /dev/vda on /mnt
#   tick=MS                            ticker on /dev/ttyS1 every MS ms
#   hog=MB hograte=MBPS                memhog (its "MEMHOG READY" goes to ttyS0)
# It prints "GUEST-READY <uptime>" on ttyS0, then runs a shell there with echo off and
# empty prompts, so a script sends one command line and reads back only its output.
# `poweroff` (or an ACPI power button press) powers the VM off.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${HAVEN_GUEST_DIR:-/var/cache/haven/guest}
META=linux-image-cloud-amd64
# Modules wanted in the guest; their dependencies are added (from each module's
# modinfo "depends=") and everything is loaded dependencies first.  Missing names
# are fine when the kernel has them built in (ext4 and friends in the cloud kernel).
WANT_REQUIRED="virtio_pci virtio_blk virtio_net virtio_console"
WANT_OPTIONAL="ext4 jbd2 mbcache crc16 crc32c_generic button evdev"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "build-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

# --- inputs ------------------------------------------------------------------------
find_busybox() {
    if [ -x /bin/busybox ] && ! readelf -l /bin/busybox 2>/dev/null | grep -q interpreter; then
        echo /bin/busybox; return
    fi
    local d="$OUT/.work/busybox"
    if [ ! -x "$d/bin/busybox" ]; then
        log "no static /bin/busybox here; downloading busybox-static"
        rm -rf "$d"; mkdir -p "$d"
        (cd "$d" && apt_get download busybox-static >/dev/null) || die "cannot download busybox-static"
        dpkg-deb -x "$d"/busybox-static_*.deb "$d"
    fi
    echo "$d/bin/busybox"
}

apt_get() {
    local opts=()
    [ "$(id -u)" = 0 ] && opts=(-o APT::Sandbox::User=root)
    apt-get -q "${opts[@]}" "$@"
}

# Prints "<package> <version>" of the kernel the meta package depends on (one apt-cache
# call: without a pkgcache.bin each call costs about half a second).
resolve_kernel() {
    local line
    line=$(apt-cache show --no-all-versions "$META" 2>/dev/null |
           sed -n 's/^Depends:.*\(linux-image-[^ ,]*\) (= \([^)]*\)).*/\1 \2/p' | head -1)
    [ -n "$line" ] || return 1
    echo "$line"
}

BUSYBOX=$(find_busybox)
local_hash=$( { cat "${BASH_SOURCE[0]}"; for f in "$HERE"/tools/*.c; do basename "$f"; cat "$f"; done
                sha256sum "$BUSYBOX"; gcc --version | head -1; } | sha256sum | cut -c1-16)

if [ -n "${HAVEN_KERNEL_DEB:-}" ]; then
    [ -f "$HAVEN_KERNEL_DEB" ] || die "HAVEN_KERNEL_DEB=$HAVEN_KERNEL_DEB does not exist"
    kpkg="file:$(basename "$HAVEN_KERNEL_DEB")"
else
    kpkg=$(resolve_kernel | tr ' ' _) || kpkg=""
fi

if [ "$FORCE" = 0 ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.gz" ] && [ -s "$OUT/VERSION" ]; then
    have_inputs=$(sed -n 's/^inputs=//p' "$OUT/VERSION")
    have_pkg=$(sed -n 's/^package=//p' "$OUT/VERSION")
    if [ "$have_inputs" = "$local_hash" ] && { [ -z "$kpkg" ] || [ "$have_pkg" = "$kpkg" ]; }; then
        [ -n "$kpkg" ] || log "cannot ask apt for $META; keeping the existing build"
        echo "$OUT: up to date ($(sed -n 's/^kernel=//p' "$OUT/VERSION"), inputs $local_hash)"
        exit 0
    fi
fi

# --- kernel package ------------------------------------------------------------------
WORK="$OUT/.work"
mkdir -p "$WORK/debs"
if [ -n "${HAVEN_KERNEL_DEB:-}" ]; then
    deb=$HAVEN_KERNEL_DEB
else
    if [ -z "$kpkg" ]; then
        log "apt does not know $META; running apt-get update"
        apt_get update -qq >/dev/null || die "apt-get update failed"
        kpkg=$(resolve_kernel | tr ' ' _) || die "apt cannot resolve $META"
    fi
    pkg=${kpkg%%_*}; ver=${kpkg#*_}
    deb=$(ls "$WORK/debs/${pkg}_${ver/:/%3a}_"*.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
        log "downloading $pkg $ver"
        if ! (cd "$WORK/debs" && apt_get download "$pkg=$ver" >/dev/null 2>&1); then
            log "download failed; running apt-get update and retrying"
            apt_get update -qq >/dev/null || die "apt-get update failed"
            kpkg=$(resolve_kernel | tr ' ' _) || die "apt cannot resolve $META"
            pkg=${kpkg%%_*}; ver=${kpkg#*_}
            (cd "$WORK/debs" && apt_get download "$pkg=$ver" >/dev/null) || die "cannot download $pkg"
        fi
        deb=$(ls -t "$WORK/debs/${pkg}_"*.deb | head -1)
        # keep only the package we use
        find "$WORK/debs" -name '*.deb' ! -path "$deb" -delete
    fi
fi

STAGE=$(mktemp -d "$WORK/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
log "unpacking $(basename "$deb")"
mkdir -p "$STAGE/deb"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$STAGE/deb" --wildcards './boot/vmlinuz-*' '*lib/modules/*'
moddir=$(ls -d "$STAGE"/deb/lib/modules/* "$STAGE"/deb/usr/lib/modules/* 2>/dev/null | head -1 || true)
kver=$(basename "${moddir:-none}")
[ -n "$moddir" ] && [ -f "$STAGE/deb/boot/vmlinuz-$kver" ] || die "no kernel and modules in $deb"

# --- initramfs tree --------------------------------------------------------------------
root="$STAGE/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,mnt,run,root,etc/acpi/PWRF,lib/modules}
mkdir -p "$root/var/log"  # busybox acpid dies without /var/log and /var/run
ln -s ../run "$root/var/run"
cp "$BUSYBOX" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
fi

# modules: name -> file (names normalised to underscores)
declare -A KO=()
while IFS= read -r f; do
    b=$(basename "$f"); b=${b%%.ko*}; KO[${b//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

declare -A SEEN=()
ORDER=()
add_module() {  # add_module NAME REQUIRED: dependencies first
    local m=${1//-/_} req=$2 f tmp deps d
    [ -z "${SEEN[$m]:-}" ] || return 0
    SEEN[$m]=1
    f=${KO[$m]:-}
    if [ -z "$f" ]; then
        if grep -qE "/${m//_/[-_]}\.ko" "$moddir/modules.builtin"; then return 0; fi
        [ "$req" = 1 ] && die "module $m is neither in $kver nor built in"
        return 0
    fi
    tmp="$root/lib/modules/$m.ko"
    case "$f" in
        *.xz) xz -dc "$f" >"$tmp" ;;
        *.zst) zstd -qdc "$f" >"$tmp" ;;
        *.gz) gzip -dc "$f" >"$tmp" ;;
        *) cp "$f" "$tmp" ;;
    esac
    deps=$(tr '\0' '\n' <"$tmp" | sed -n 's/^depends=//p' | head -1 | tr ',' ' ')
    for d in $deps; do add_module "$d" 1; done
    ORDER+=("$m")
}
for m in $WANT_REQUIRED; do add_module "$m" 1; done
for m in $WANT_OPTIONAL; do add_module "$m" 0; done
printf '%s\n' "${ORDER[@]}" >"$root/lib/modules/load.order"
log "modules ($kver): ${ORDER[*]}"

# guest tools
for c in "$HERE"/tools/*.c; do
    n=$(basename "$c" .c)
    gcc -static -Os -s -Wall -o "$root/bin/$n" "$c" || die "cannot compile $c"
done

cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
# busybox acpid runs this on an ACPI power button press (QMP system_powerdown)
sync
exec /bin/busybox poweroff -f
EOF
chmod 755 "$root/etc/acpi/PWRF/00000080"

cat >"$root/etc/shinit" <<'EOF'
# sourced by the interactive console shell (ENV=/etc/shinit, set by /init)
if [ ! -e /run/guest-ready ]; then
    : >/run/guest-ready
    echo "GUEST-READY $(cut -d' ' -f1 /proc/uptime)"
fi
EOF

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
# Haven busybox guest, PID 1 (built by guest/build-guest.sh).
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
if ( : </dev/ttyS0 ) 2>/dev/null; then
    exec 0</dev/ttyS0 1>/dev/ttyS0 2>&1
else
    exec 0</dev/console 1>/dev/console 2>&1
fi
dmesg -n 1
for m in $(cat /lib/modules/load.order); do
    insmod "/lib/modules/$m.ko" >>/tmp/insmod.log 2>&1 || echo "insmod $m failed" >>/tmp/insmod.log
done

ip= gw= hn= tick= hog= hograte=0 nomount=
for a in $(cat /proc/cmdline); do
    case "$a" in
        haven.ip=*) ip=${a#*=} ;;
        haven.gw=*) gw=${a#*=} ;;
        haven.hostname=*) hn=${a#*=} ;;
        haven.nomount) nomount=1 ;;
        tick=*) tick=${a#*=} ;;
        hog=*) hog=${a#*=} ;;
        hograte=*) hograte=${a#*=} ;;
    esac
done

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    if [ -n "$ip" ]; then
        ip addr add "$ip" dev eth0
        [ -n "$gw" ] && ip route add default via "$gw"
    fi
elif [ -n "$ip" ]; then
    echo "haven: haven.ip=$ip given but the VM has no eth0 (no virtio-net NIC?)"
fi
if [ -z "$nomount" ]; then
    for d in /dev/vda /dev/vda1; do
        [ -b "$d" ] && mount "$d" /mnt 2>/dev/null && break
    done
fi
[ -z "$hn" ] && [ -s /mnt/etc/hostname ] && read -r hn </mnt/etc/hostname
[ -n "$hn" ] && hostname "$hn"

[ -n "$tick" ] && ticker /dev/ttyS1 "$tick" </dev/null >/dev/null 2>&1 &
[ -n "$hog" ] && memhog "$hog" "$hograte" </dev/null &
ls /dev/input/event* >/dev/null 2>&1 && acpid -c /etc/acpi

# `poweroff`/`halt`/`reboot` without -f signal PID 1
trap 'sync; poweroff -f' USR2
trap 'sync; halt -f' USR1
trap 'sync; reboot -f' TERM

# The console shell prints GUEST-READY from its $ENV file, after ash's banner, so that
# everything a script reads after GUEST-READY is the output of its own commands.
stty -echo
while :; do
    ENV=/etc/shinit PS1= PS2= setsid cttyhack sh </dev/ttyS0 >/dev/ttyS0 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
    sleep 0.2
    stty -echo
done
EOF
chmod 755 "$root/init"

# --- pack --------------------------------------------------------------------------------
find "$root" -exec touch -h -d @0 {} +  # reproducible archive
(cd "$root" && find . | sort | cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -6 -n >"$STAGE/initrd.gz"
cp "$STAGE/deb/boot/vmlinuz-$kver" "$STAGE/vmlinuz"
printf 'kernel=%s\npackage=%s\ninputs=%s\nmodules=%s\n' \
    "$kver" "$kpkg" "$local_hash" "${ORDER[*]}" >"$STAGE/VERSION"
mv -f "$STAGE/vmlinuz" "$OUT/vmlinuz"
mv -f "$STAGE/initrd.gz" "$OUT/initrd.gz"
mv -f "$STAGE/VERSION" "$OUT/VERSION"
echo "$OUT: built ($kver, inputs $local_hash, initrd $(du -k "$OUT/initrd.gz" | cut -f1) KiB)"
