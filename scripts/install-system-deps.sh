#!/usr/bin/env bash
# Install the system packages hsmkms needs when they are missing: SoftHSMv2, NSS softoken and certutil (the
# second PKCS#11 implementation the tests run on), and the Python venv module; and the extra ones named as
# arguments.
# As root this uses apt-get; otherwise it says what to install and fails.
set -euo pipefail

need=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(softhsm2)
compgen -G '/usr/lib/*/libsoftokn3.so' >/dev/null || need+=(libnss3)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# Extra packages a target needs (wrk for the benchmark, haproxy for the cluster, PostgreSQL and Redis servers
# for the tests' private instances), installed only when missing.
for extra in "$@"; do
    case "$extra" in
        postgresql) compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql) ;;
        *) command -v "$extra" >/dev/null 2>&1 || need+=("$extra") ;;
    esac
done

[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "hsmkms needs these Debian packages: ${need[*]}" >&2
    echo "install them with: sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
    exit 1
fi
echo "installing ${need[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
