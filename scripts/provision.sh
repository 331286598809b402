#!/usr/bin/env bash
# Install the system packages the STAC API test server needs:
# PostgreSQL 15 and PostGIS 3 (Debian packages). Idempotent; quiet.
set -euo pipefail

PG_BINDIR=/usr/lib/postgresql/15/bin
POSTGIS_CONTROL=/usr/share/postgresql/15/extension/postgis.control
LOG="${PROVISION_LOG:-/tmp/provision-apt.log}"

packages=()
[[ -x "$PG_BINDIR/initdb" ]] || packages+=(postgresql-15)
[[ -f "$POSTGIS_CONTROL" ]] || packages+=(postgresql-15-postgis-3)

if ((${#packages[@]} == 0)); then
    echo "provision: PostgreSQL 15 and PostGIS 3 already installed"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "provision: missing packages: ${packages[*]}" >&2
    echo "provision: run as root, or install them: sudo apt-get install -y ${packages[*]}" >&2
    exit 1
fi

apt_quiet() {
    if ! DEBIAN_FRONTEND=noninteractive apt-get "$@" >>"$LOG" 2>&1; then
        echo "provision: 'apt-get $*' failed; last lines of $LOG:" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    fi
}

: >"$LOG"
echo "provision: apt-get update (log: $LOG)"
apt_quiet update
echo "provision: apt-get install ${packages[*]}"
apt_quiet install -y --no-install-recommends "${packages[@]}"

for path in "$PG_BINDIR/initdb" "$POSTGIS_CONTROL"; do
    if [[ ! -e "$path" ]]; then
        echo "provision: $path still missing after install" >&2
        exit 1
    fi
done
echo "provision: done"
