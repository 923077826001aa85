# The settings both CI SLURMs share, sourced by start_slurm.sh and start_slurm_two_nodes.sh: run as root
# with munge, no cgroups, no accounting; jobs stay known for 10 minutes after they end.
shared_slurm_settings() {
  cat <<'CONF'
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MinJobAge=600
CONF
}
