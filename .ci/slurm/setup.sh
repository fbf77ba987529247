#!/usr/bin/env bash
# Installs and configures a single-node SLURM test cluster (munge, slurmctld, slurmd) for
# tests/test_slurm.py: Debian packages, a munge key, /etc/slurm/slurm.conf rendered from
# slurm.conf.in with this machine's real CPUs and memory (`slurmd -C`). Starts nothing: the
# test starts the daemons and stops them by pid. Idempotent; root only; quick when installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm setup: not root, skipped (tests/test_slurm.py will skip)" >&2
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: one shared key (created by the package; made here when missing).
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
install -d -o munge -g munge -m 0755 /run/munge

# slurm: state, spool, log and pid directories (SlurmUser=root).
install -d -m 0755 /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm \
    /run/slurm

# The node line is this machine as slurmd sees it (NodeName=<host> CPUs=.. RealMemory=..).
node="$(slurmd -C | head -n 1)"
host="$(hostname -s)"
conf="$(sed -e "s|@NODE@|${node}|" -e "s|@HOST@|${host}|" "$here/slurm.conf.in")"
if [ ! -f /etc/slurm/slurm.conf ] || [ "$conf" != "$(cat /etc/slurm/slurm.conf)" ]; then
    printf '%s\n' "$conf" >/etc/slurm/slurm.conf
fi
echo "slurm setup: /etc/slurm/slurm.conf for ${node}"
