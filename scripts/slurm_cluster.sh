#!/usr/bin/env bash
# A one-node Slurm cluster with accounting on localhost, for the `slurm` tests (tests/test_slurm.py)
# and CI (.ci/run). Why accounting: without sacct, submitit cannot tell that a job ended without a
# result and the launching process waits forever. Commands follow shared/SLURM.md (Debian 12,
# slurm-wlm 22.05, munge, slurmdbd on MariaDB, as root, no systemd).
#
# Idempotent: a daemon that is already running is left alone, and a node that is already idle
# makes the script a no-op. It writes /etc/slurm/slurm.conf only when there is none or when the
# one there is this script's (marker line), so it never overwrites a real cluster's configuration.
#   scripts/slurm_cluster.sh          start (installs the Debian packages if missing)
#   scripts/slurm_cluster.sh stop     stop the daemons by their pid files
set -euo pipefail

MARKER="# written by peftbench scripts/slurm_cluster.sh"
say() { echo "[slurm_cluster] $*" >&2; }
die() { say "error: $*"; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
node_up() { sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

stop() {
  for p in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid; do
    alive "$p" && kill "$(cat "$p")" || true
  done
  mysqladmin shutdown 2>/dev/null || true
  alive /run/munge/munged.pid && kill "$(cat /run/munge/munged.pid)" || true
}

install_packages() {
  local missing=()
  for bin in slurmctld:slurm-wlm slurmdbd:slurmdbd munged:munge mysqld_safe:mariadb-server; do
    command -v "${bin%%:*}" >/dev/null || missing+=("${bin##*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

start_munge() {
  if [ ! -f /etc/munge/munge.key ]; then
    mungekey --create
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  alive /run/munge/munged.pid || su -s /bin/sh munge -c /usr/sbin/munged
}

start_mariadb() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! mysqladmin ping >/dev/null 2>&1; then
    (mysqld_safe >/tmp/mysqld_safe.log 2>&1 &)
    for _ in $(seq 1 30); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
  fi
  mysqladmin ping >/dev/null 2>&1 || die "MariaDB did not start (see /tmp/mysqld_safe.log)"
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdbpass';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

# slurm.conf as this script wants it, on stdout.
slurm_conf() {
  local host mem
  host=$(hostname)
  # The node's memory: what the machine has, less 2 GB for the daemons (slurmd refuses a
  # RealMemory above the real one).
  mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048))
  # cred_expire: a requeued job waits this long before it starts again (default 120 s), and
  # the scheduler then looks for it every sched_interval / bf_interval (60 s / 30 s): the
  # tests requeue interrupted runs, so 10 s and 5 s here.
  cat <<CONF
$MARKER
ClusterName=local
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
KillWait=30
InactiveLimit=0
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

conf_current() { [ -f /etc/slurm/slurm.conf ] && [ "$(slurm_conf)" = "$(cat /etc/slurm/slurm.conf)" ]; }

write_configs() {
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm
  if [ -f /etc/slurm/slurm.conf ] && ! grep -qF "$MARKER" /etc/slurm/slurm.conf; then
    die "/etc/slurm/slurm.conf exists and is not this script's; not touching a real cluster"
  fi
  cat >/etc/slurm/slurmdbd.conf <<CONF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmdbpass
StorageLoc=slurm_acct_db
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 600 /etc/slurm/slurmdbd.conf
  if ! conf_current; then
    slurm_conf >/etc/slurm/slurm.conf
    # daemons started on an older slurm.conf: restart them on this one
    for p in /run/slurmd.pid /run/slurmctld.pid; do
      if alive "$p"; then kill "$(cat "$p")"; for _ in $(seq 1 20); do alive "$p" || break; sleep 0.5; done; fi
    done
  fi
}

start() {
  [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"
  if command -v sinfo >/dev/null && conf_current && node_up; then
    say "already up: $(sinfo -h -o '%P %t %N' | head -1)"
    return
  fi
  install_packages
  start_munge
  start_mariadb
  write_configs
  alive /run/slurmdbd.pid || slurmdbd
  for _ in $(seq 1 20); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
  sacctmgr -i add cluster local >/dev/null 2>&1 || true
  alive /run/slurmctld.pid || slurmctld
  alive /run/slurmd.pid || slurmd
  for _ in $(seq 1 30); do node_up && break; sleep 1; done
  node_up || die "the node is not idle after 30 s: $(sinfo -h 2>&1 | head -1); see /var/log/slurm/"
  say "up: $(sinfo -h -o '%P %t %N' | head -1)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 [start|stop]" ;;
esac
