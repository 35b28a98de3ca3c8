# Shared by the busybox OS scripts (sourced; Ganeti OS API 20, see ganeti-os-interface(7)).
# The scripts get a clean environment: OS_API_VERSION, INSTANCE_NAME, DISK_COUNT,
# DISK_<n>_PATH, ...; they run with the OS directory as working directory.

PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH LC_ALL=C

SCRIPT=$(basename "$0")

log() { echo "busybox $SCRIPT: $*"; }
die() { echo "busybox $SCRIPT: error: $*" >&2; exit 1; }

usage_check() {
    case "${1:-}" in
        -h|--help)
            echo "usage: $SCRIPT  (a Ganeti OS API 20 script: input comes from environment" \
                 "variables, see ganeti-os-interface(7))"
            exit 0 ;;
    esac
    case "${OS_API_VERSION:-}" in
        10|15|20) ;;
        "") die "OS_API_VERSION is not set; this script is run by Ganeti or Haven" ;;
        *) die "unsupported OS_API_VERSION '$OS_API_VERSION' (want 10, 15 or 20)" ;;
    esac
    case "${OS_VARIANT:-default}" in
        default|"") ;;
        *) die "unknown variant '$OS_VARIANT' (this OS has only 'default')" ;;
    esac
    [ -n "${INSTANCE_NAME:-}" ] || die "INSTANCE_NAME is not set"
}

# The first 16 characters of the instance name: the longest ext4 label.
fs_label() { printf '%.16s' "$INSTANCE_NAME"; }

# Build a filesystem on $1 holding /etc/hostname (and /etc/hosts) for $INSTANCE_NAME,
# populated with mke2fs -d, so nothing is mounted.
make_fs() {
    dev=$1
    tree=$(mktemp -d)
    trap 'rm -rf "$tree"' EXIT
    mkdir -p "$tree/etc"
    echo "$INSTANCE_NAME" >"$tree/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$INSTANCE_NAME" >"$tree/etc/hosts"
    mkfs.ext4 -q -F -L "$(fs_label)" -d "$tree" "$dev"
}
