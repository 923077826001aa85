#!/usr/bin/env bash
# Start a second, separate SLURM with two compute nodes on this one host, for the multi-node test
# (tests/pipelines/test_multinode.py). Two slurmd on one host need a SLURM built with
# --enable-multiple-slurmd: Debian's slurm-wlm is (`scontrol show config` says MULTIPLE_SLURMD = Yes).
#
# Everything of this instance is its own: config dir, cluster name, ports, state/spool dirs, pid and log
# files. The single-node SLURM of .ci/start_slurm.sh (/etc/slurm, ports 6817/6818) is neither read nor
# touched; use this one with SLURM_CONF=/etc/slurm-two-nodes/slurm.conf. It needs root, munge (started
# by .ci/start_slurm.sh) and Debian's slurm-wlm. Idempotent: does nothing when both nodes answer.
#
# Both nodes, zsad-node1 and zsad-node2, have this host as NodeHostname and 127.0.0.1 as address, each
# its own slurmd port. A node's name must differ from every NodeHostname (SLURM also looks names up as
# host names: "Duplicated NodeHostName"), and `localhost` cannot be one of several nodes (SLURM takes a
# node of that name for any name while it is the only one read). These names do not resolve, unlike a
# real cluster's nodes: a job gives Lightning MASTER_ADDR=127.0.0.1 itself (docs/cluster.md).
set -euo pipefail
source "$(dirname "$0")/slurm_settings.sh"

conf_dir=/etc/slurm-two-nodes
export SLURM_CONF=$conf_dir/slurm.conf
host=$(hostname -s)
nodes="zsad-node[1-2]"

up() {
  timeout 5 sinfo -h -N -o "%N %T" 2>/dev/null | grep -cE "idle|mixed|alloc" | grep -qx 2
}
if command -v sinfo >/dev/null && up; then
  echo "slurm (two nodes): already running"; exit 0
fi
if [ "$host" = zsad-node1 ] || [ "$host" = zsad-node2 ]; then
  echo "slurm (two nodes): the host is called $host, a name this script gives a node" >&2
  exit 1
fi

spool=/var/spool/slurm-two-nodes
mkdir -p "$conf_dir" "$spool/ctld" "$spool/zsad-node1" "$spool/zsad-node2" /var/log/slurm
cat > "$SLURM_CONF" <<CONF
ClusterName=zsad-two-nodes
SlurmctldHost=${host}(127.0.0.1)
$(shared_slurm_settings)
SlurmctldPort=6827
SlurmdPort=6828
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/%n
SlurmctldPidFile=/run/slurmctld-two-nodes.pid
SlurmdPidFile=/run/slurmd-two-nodes-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld-two-nodes.log
SlurmdLogFile=/var/log/slurm/slurmd-two-nodes-%n.log
NodeName=zsad-node1 NodeHostname=${host} NodeAddr=127.0.0.1 Port=6828 CPUs=1 RealMemory=2000 State=UNKNOWN
NodeName=zsad-node2 NodeHostname=${host} NodeAddr=127.0.0.1 Port=6829 CPUs=1 RealMemory=2000 State=UNKNOWN
PartitionName=two Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
pgrep -x munged >/dev/null || { echo "slurm (two nodes): munged is not running (.ci/start_slurm.sh starts it)" >&2; exit 1; }
running /run/slurmctld-two-nodes.pid || slurmctld -f "$SLURM_CONF"
config=""
for _ in $(seq 1 30); do config=$(scontrol show config 2>/dev/null) && break; sleep 1; done
if ! grep -qE "^MULTIPLE_SLURMD +=  *Yes" <<<"$config"; then
  echo "slurm (two nodes): this SLURM is not built with --enable-multiple-slurmd (scontrol show config)" >&2
  exit 1
fi
for node in zsad-node1 zsad-node2; do
  running "/run/slurmd-two-nodes-$node.pid" || slurmd -f "$SLURM_CONF" -N "$node"
done

for _ in $(seq 1 30); do
  if up; then
    echo "slurm (two nodes): $(sinfo -h -N -o '%N %T' | tr '\n' ' ')(SLURM_CONF=$SLURM_CONF)"; exit 0
  fi
  scontrol update nodename="$nodes" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm (two nodes): the nodes did not become idle" >&2
tail -n 20 /var/log/slurm/slurmctld-two-nodes.log /var/log/slurm/slurmd-two-nodes-*.log >&2 || true
exit 1
