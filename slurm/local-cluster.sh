#!/usr/bin/env bash
# A single-node Slurm cluster (with accounting) on a Debian machine, for laptops and CI. Run as root.
#
#   bash slurm/local-cluster.sh up       # install if missing, write configs, start daemons, wait for an idle node
#   bash slurm/local-cluster.sh status   # daemons and sinfo
#   bash slurm/local-cluster.sh down     # stop exactly the daemons `up` started (by PID)
#
# No systemd or cgroups needed: proctrack/linuxproc, task/none, select/cons_tres with CR_CPU. Daemons are started
# by hand; their PIDs go to $STATE_DIR so that `down` never touches a daemon it did not start.
# Settings (environment): KDBENCH_SLURM_CPUS (CPUs the node declares, default 8), KDBENCH_SLURM_CLUSTER (kdbench).
set -euo pipefail

STATE_DIR=/run/kdbench-slurm
CLUSTER=${KDBENCH_SLURM_CLUSTER:-kdbench}
CPUS=${KDBENCH_SLURM_CPUS:-8}
NODE=$(hostname -s)
ACCOUNT=kdbench
DB_PASSWORD=kdbench-local
CONF_DIR=/etc/slurm
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; `down` stops them in reverse

say() { echo "local-cluster: $*"; }
die() { echo "local-cluster: error: $*" >&2; exit 1; }

alive() {  # alive NAME: the daemon we recorded is still running
  local pid_file="$STATE_DIR/$1.pid"
  [[ -s $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 4))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "timed out after ${seconds}s waiting for $what"
}

record_pid() {  # record_pid NAME PIDFILE: copy the daemon's own pid file into our state dir
  wait_for 20 "$1 to write $2" test -s "$2"
  cp "$2" "$STATE_DIR/$1.pid"
  say "$1 started (pid $(cat "$STATE_DIR/$1.pid"))"
}

install_packages() {
  local missing=()
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
}

write_configs() {
  local memory_mb
  memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$CONF_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
  chown -R slurm:slurm /var/lib/slurm /var/log/slurm /run/slurm
  cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by kdbench slurm/local-cluster.sh: a single-node cluster without systemd or cgroups.
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
# A requeued job (time limit, preemption) may start again after cred_expire seconds (Slurm's default: 120).
AuthInfo=cred_expire=15
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
# kill_invalid_depend: a student whose teacher failed is cancelled instead of pending forever.
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0,kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# Jobs that end stay visible to squeue/scontrol this long; sacct (slurmdbd) keeps them for good.
MinJobAge=300
KillWait=10
MaxArraySize=1001
MaxJobCount=20000
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE CPUs=$CPUS RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# Written by kdbench slurm/local-cluster.sh.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm "$CONF_DIR/slurmdbd.conf"
  chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start_munged() {
  alive munged && return 0
  if pgrep -x munged >/dev/null; then die "a munged not started by this script is running; stop it first"; fi
  mkdir -p /run/munge
  chown munge:munge /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  record_pid munged /run/munge/munged.pid
  wait_for 10 "munge to answer" bash -c 'munge -n | unmunge'
}

start_mariadb() {
  alive mariadbd && return 0
  if pgrep -x mariadbd >/dev/null; then die "a mariadbd not started by this script is running; stop it first"; fi
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
  rm -f /run/mysqld/kdbench.pid
  setsid -f mariadbd --user=mysql --pid-file=/run/mysqld/kdbench.pid --skip-networking=0 \
    --bind-address=127.0.0.1 >/var/log/slurm/mariadbd.log 2>&1
  record_pid mariadbd /run/mysqld/kdbench.pid
  wait_for 30 "MariaDB to accept connections" mariadb -e "SELECT 1"
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
  alive slurmdbd && return 0
  if pgrep -x slurmdbd >/dev/null; then die "a slurmdbd not started by this script is running; stop it first"; fi
  rm -f /run/slurm/slurmdbd.pid
  slurmdbd
  record_pid slurmdbd /run/slurm/slurmdbd.pid
  wait_for 30 "slurmdbd to answer" sacctmgr -n list cluster
  # The cluster, an account and root's association must exist before slurmctld starts (associations are enforced).
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" ||
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description=kdbench organization=kdbench >/dev/null
  local user
  for user in root ${SUDO_USER:-}; do
    sacctmgr -n -P list user format=user | grep -qx "$user" ||
      sacctmgr -i add user "$user" account="$ACCOUNT" defaultaccount="$ACCOUNT" cluster="$CLUSTER" >/dev/null
  done
}

start_slurmctld() {
  alive slurmctld && return 0
  if pgrep -x slurmctld >/dev/null; then die "a slurmctld not started by this script is running; stop it first"; fi
  rm -f /run/slurm/slurmctld.pid
  slurmctld
  record_pid slurmctld /run/slurm/slurmctld.pid
  wait_for 30 "slurmctld to answer" scontrol ping
}

start_slurmd() {
  alive slurmd && return 0
  if pgrep -x slurmd >/dev/null; then die "a slurmd not started by this script is running; stop it first"; fi
  rm -f /run/slurm/slurmd.pid
  slurmd -N "$NODE"
  record_pid slurmd /run/slurm/slurmd.pid
}

node_idle() {
  sinfo -h -N -n "$NODE" -o %T | grep -Eq '^(idle|mixed|allocated)$'
}

cmd_up() {
  [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts system daemons)"
  install_packages
  mkdir -p "$STATE_DIR"
  write_configs
  start_munged
  start_mariadb
  start_slurmdbd
  start_slurmctld
  start_slurmd
  scontrol reconfigure >/dev/null  # picks up a changed slurm.conf when the daemons were already up
  if ! node_idle; then scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true; fi
  wait_for 60 "node $NODE to become idle" node_idle
  say "up: cluster $CLUSTER, node $NODE with $CPUS CPUs, partition debug, account $ACCOUNT"
}

cmd_down() {
  local index name pid
  for ((index = ${#DAEMONS[@]} - 1; index >= 0; index--)); do
    name=${DAEMONS[index]}
    [[ -s $STATE_DIR/$name.pid ]] || continue
    pid=$(cat "$STATE_DIR/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
      say "$name stopped (pid $pid)"
    fi
    rm -f "$STATE_DIR/$name.pid"
  done
}

cmd_status() {
  local name state=0
  for name in "${DAEMONS[@]}"; do
    if alive "$name"; then
      echo "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"
    else
      echo "$name: not running"
      state=1
    fi
  done
  if command -v sinfo >/dev/null && sinfo >/dev/null 2>&1; then
    sinfo
    scontrol show config | grep -E '^(ClusterName|MaxArraySize|SelectTypeParameters) '
  fi
  return $state
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
