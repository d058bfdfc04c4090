#!/usr/bin/env bash
# Trains rag_jax on several GPU nodes of a SLURM cluster: writes an sbatch script whose srun
# starts the same command in every task, and submits it. `launch/slurm.sh --help`.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh [OPTIONS] [-- EXTRA TRAIN FLAGS]

Writes LOG_DIR/JOB_NAME.sbatch and submits it with sbatch. The job runs, from the root of this
checkout (which the nodes must see: a shared filesystem),

  srun --kill-on-bad-exit=1 PYTHON -m rag_jax.train --config CONFIG --workdir WORKDIR [EXTRA]

srun starts one process per GPU (default: --ntasks-per-node=GPUS, every task sees all the
node's GPUs and JAX's SLURM detection gives task SLURM_LOCALID the GPU of that index), or with
--task-per-node one process per node that uses all its GPUs (JAX_LOCAL_DEVICE_IDS=0,..,G-1).
jax.distributed.initialize() reads the rest from SLURM's variables (SLURM_JOB_ID,
SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID); the coordinator is the first
node, on port 61440 + SLURM_JOB_ID % 4096 unless JAX_COORDINATOR_PORT is set.
Each task writes LOG_DIR/JOB_NAME-<job id>-<task id>.log; --kill-on-bad-exit=1 ends every task
as soon as one exits non-zero, and the job fails.

Options (default in brackets):
  --nodes N               nodes [2]
  --gpus-per-node G       GPUs per node [8]
  --task-per-node         one process per node instead of one per GPU
  --job-name NAME         [rag-jax]
  --time T                wall-clock limit [24:00:00]
  --partition P           [the cluster's default]
  --account A             [the cluster's default]
  --sbatch-flag FLAG      one more #SBATCH line, e.g. --sbatch-flag=--exclusive (repeatable)
  --config CONFIG         rag_jax config, relative to the checkout [experiments/fever.py]
  --workdir DIR           checkpoints and metrics, on the shared filesystem [runs/NAME]
  --python PYTHON         Python on the nodes with rag_jax installed [python]
  --setup LINE            a shell line the job runs before srun, e.g.
                          'module load cuda; source .venv/bin/activate' (repeatable)
  --log-dir DIR           sbatch script and logs [$LOGDIR, else rag_jax_logs/NAME]
  --dry-run               print the sbatch script and the sbatch command, submit nothing
  -h, --help              this help

Examples:
  launch/slurm.sh --dry-run
  launch/slurm.sh --nodes 4 --gpus-per-node 8 --partition gpu --python .venv/bin/python \
    --workdir runs/fever3 -- --config.batch_size=128
EOF
}

die() {
  echo "slurm.sh: $*" >&2
  exit 2
}

# shellcheck source=launch/quote.bash
source "$(dirname "${BASH_SOURCE[0]}")/quote.bash"

nodes=2
gpus=8
per_node=0
job_name=rag-jax
time_limit=24:00:00
partition=""
account=""
sbatch_flags=()
config=experiments/fever.py
workdir=""
python=python
setup=()
log_dir="${LOGDIR:-}"
dry_run=0
extra=()

need_value() {
  [[ $2 -ge 2 ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) need_value "$1" $#; nodes="$2"; shift 2 ;;
    --gpus-per-node) need_value "$1" $#; gpus="$2"; shift 2 ;;
    --task-per-node) per_node=1; shift ;;
    --job-name) need_value "$1" $#; job_name="$2"; shift 2 ;;
    --time) need_value "$1" $#; time_limit="$2"; shift 2 ;;
    --partition) need_value "$1" $#; partition="$2"; shift 2 ;;
    --account) need_value "$1" $#; account="$2"; shift 2 ;;
    --sbatch-flag) need_value "$1" $#; sbatch_flags+=("$2"); shift 2 ;;
    --config) need_value "$1" $#; config="$2"; shift 2 ;;
    --workdir) need_value "$1" $#; workdir="$2"; shift 2 ;;
    --python) need_value "$1" $#; python="$2"; shift 2 ;;
    --setup) need_value "$1" $#; setup+=("$2"); shift 2 ;;
    --log-dir) need_value "$1" $#; log_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    *) die "unknown argument '$1' (see --help; train flags go after --)" ;;
  esac
done

[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$nodes'"
[[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, got '$gpus'"
[[ $job_name =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job-name: letters, digits, _ . - only, got '$job_name'"
workdir="${workdir:-runs/$job_name}"
log_dir="${log_dir:-rag_jax_logs/$job_name}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$log_dir" in
  /*) ;;
  *) log_dir="$PWD/$log_dir" ;;
esac
[[ $log_dir != *[[:space:]]* ]] || die "--log-dir must not contain whitespace (#SBATCH lines are not shell-quoted)"
script_path="$log_dir/$job_name.sbatch"

if [[ $per_node -eq 1 ]]; then
  tasks_per_node=1
else
  tasks_per_node=$gpus
fi

batch_script() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$job_name"
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=$tasks_per_node"
  echo "#SBATCH --gpus-per-node=$gpus"
  echo "#SBATCH --time=$time_limit"
  echo "#SBATCH --output=$log_dir/$job_name-%j.out"
  if [[ -n $partition ]]; then echo "#SBATCH --partition=$partition"; fi
  if [[ -n $account ]]; then echo "#SBATCH --account=$account"; fi
  local flag line
  for flag in "${sbatch_flags[@]+"${sbatch_flags[@]}"}"; do
    echo "#SBATCH $flag"
  done
  echo "# Written by launch/slurm.sh. One task per $([[ $per_node -eq 1 ]] && echo node || echo GPU)."
  echo "set -euo pipefail"
  echo "cd $(quote "$repo")"
  for line in "${setup[@]+"${setup[@]}"}"; do
    echo "$line"
  done
  if [[ $per_node -eq 1 ]]; then
    local ids
    ids="$(seq -s, 0 $((gpus - 1)))"
    echo "# One process per node: it uses all the node's GPUs, not only GPU SLURM_LOCALID."
    echo "export JAX_LOCAL_DEVICE_IDS=$ids"
  fi
  echo "srun --kill-on-bad-exit=1 --output=$(quote "$log_dir/$job_name-%j-%t.log") \\"
  echo "  $(quote_all "$python" -m rag_jax.train --config "$config" --workdir "$workdir" \
    "${extra[@]+"${extra[@]}"}")"
}

if [[ $dry_run -eq 1 ]]; then
  echo "# $script_path:"
  batch_script
  echo "# submit:"
  echo "mkdir -p $(quote "$log_dir")"
  echo "sbatch $(quote "$script_path")"
  exit 0
fi

command -v sbatch >/dev/null || die "no sbatch on PATH (run this on the cluster's login node; --dry-run prints the script)"
mkdir -p "$log_dir"
batch_script >"$script_path"
echo "+ sbatch $(quote "$script_path")" >&2
sbatch "$script_path"
echo "slurm.sh: logs in $log_dir/$job_name-<job id>-<task id>.log" >&2
