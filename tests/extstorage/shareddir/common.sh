# Shared by the scripts of this provider: a minimal ExtStorage provider written as
# Ganeti's ganeti-extstorage-interface(7) describes, used unchanged by Haven's tests.
# Volumes are plain files in EXTP_DIR; attach prints the file as the device path.
set -eu
usage() { echo "usage: $0 (environment: VOL_NAME, EXTP_DIR, ...)" >&2; exit 1; }
case "${1:-}" in -h|--help) usage ;; esac
[ -n "${VOL_NAME:-}" ] || { echo "shareddir: VOL_NAME is not set" >&2; exit 1; }
DIR="${EXTP_DIR:-}"
[ -n "$DIR" ] || { echo "shareddir: no dir parameter; give dir=/shared/path in --disk" >&2; exit 1; }
[ -d "$DIR" ] || { echo "shareddir: directory $DIR does not exist on $(hostname)" >&2; exit 1; }
VOL="$DIR/$VOL_NAME"
