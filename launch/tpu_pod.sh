#!/usr/bin/env bash
# Trains rag_jax on a Cloud TPU VM or pod: create it, copy the code, install, start the same
# command on every worker, watch, fetch the logs, delete. `launch/tpu_pod.sh --help`.
# shellcheck disable=SC2329  # the step_* functions are called by name: "step_$step"
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [OPTIONS] [-- EXTRA TRAIN FLAGS]

Runs `python -m rag_jax.train --config CONFIG --workdir WORKDIR [EXTRA TRAIN FLAGS]` on every
worker of a Cloud TPU VM or pod (`gcloud compute tpus tpu-vm ... --worker=all`); each worker's
jax.distributed.initialize() finds its peers by itself. The steps, in this order:

  create   gcloud compute tpus tpu-vm create NAME (skip it for an existing VM: --steps)
  copy     a tarball of this checkout (tracked and untracked, not ignored files), scp'd to
           every worker and unpacked into ~/rag_jax_code (replacing what was there)
  install  uv (https://astral.sh/uv), a Python PYTHON_VERSION venv in ~/rag_jax_venv,
           `pip install -e .` and `jax[tpu]` into it
  run      on every worker, launch/tpu_worker.sh starts the training command detached from
           ssh; its output goes to ~/rag_jax_worker_<hostname>.log on that worker
  watch    every POLL seconds, one status line per worker; when a worker exits non-zero (or
           dies), all workers are stopped (SIGTERM, then SIGKILL) and the script fails
  logs     every worker's log into LOG_DIR/<worker index>.log (ssh --output-directory)
  stop     stop the run on all workers (not in the default steps)
  delete   gcloud compute tpus tpu-vm delete NAME (with --delete, after the other steps,
           whether they succeeded or not)

Ctrl-C while watching leaves the job running; `--steps watch,logs` watches it again.

Options (default in brackets):
  --name NAME                 TPU VM name [rag-jax]
  --zone ZONE                 zone that offers the accelerator type [us-central1-a]
  --accelerator-type TYPE     e.g. v5litepod-16, v4-32, v6e-16 [v5litepod-16]
  --version RUNTIME           TPU runtime version; v5e: v2-alpha-tpuv5-lite,
                              v4 / v5p: tpu-ubuntu2204-base, v6e: v2-alpha-tpuv6e
                              [v2-alpha-tpuv5-lite]
  --project PROJECT           Google Cloud project [gcloud's configured project]
  --spot                      create a Spot VM (preemptible; a preempted run resumes from
                              its checkpoints when started again with the same workdir)
  --create-flag FLAG          one more flag for `tpu-vm create` (repeatable)
  --config CONFIG             rag_jax config, relative to the code [experiments/fever.py]
  --workdir DIR               checkpoints and metrics; use gs://BUCKET/PATH: every worker
                              writes there and it outlives the VM [~/rag_jax_runs/NAME]
  --python-version VERSION    Python of the venv on the workers [3.12]
  --poll SECONDS              watch interval [60]
  --grace SECONDS             stop: SIGKILL this long after SIGTERM [30]
  --log-dir DIR               local directory for the fetched logs [$LOGDIR, else rag_jax_logs/NAME]
  --steps LIST                comma-separated steps [create,copy,install,run,watch,logs]
  --delete                    delete the VM at the end
  --dry-run                   print every command instead of running it
  -h, --help                  this help

Examples:
  launch/tpu_pod.sh --dry-run
  launch/tpu_pod.sh --name rag-fever --accelerator-type v4-32 --zone us-central2-b \
    --version tpu-ubuntu2204-base --workdir gs://my-bucket/rag/fever3 --delete \
    -- --config.batch_size=128
EOF
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

# shellcheck source=launch/quote.bash
source "$(dirname "${BASH_SOURCE[0]}")/quote.bash"

# Like quote_all, but a --flag=value keeps its flag unquoted.
quote_all() {
  local out="" word
  for word in "$@"; do
    if [[ $word =~ ^(--[a-z][-a-z0-9_.]*=)(.+)$ ]]; then
      out+="${BASH_REMATCH[1]}$(quote "${BASH_REMATCH[2]}") "
    else
      out+="$(quote "$word") "
    fi
  done
  printf '%s' "${out% }"
}

# Like quote, but leaves a leading ~/ to the remote shell.
# shellcheck disable=SC2088  # the ~ is for the worker's shell
quote_remote_path() {
  if [[ $1 == "~/"* ]]; then
    printf '~/%s' "$(quote "${1#\~/}")"
  else
    quote "$1"
  fi
}

name=rag-jax
zone=us-central1-a
accelerator_type=v5litepod-16
runtime_version=v2-alpha-tpuv5-lite
project=""
spot=0
create_flags=()
config=experiments/fever.py
workdir=""
python_version=3.12
poll=60
grace=30
log_dir="${LOGDIR:-}"
steps_arg=create,copy,install,run,watch,logs
delete=0
dry_run=0
extra=()

need_value() {
  [[ $2 -ge 2 ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$1" $#; name="$2"; shift 2 ;;
    --zone) need_value "$1" $#; zone="$2"; shift 2 ;;
    --accelerator-type) need_value "$1" $#; accelerator_type="$2"; shift 2 ;;
    --version) need_value "$1" $#; runtime_version="$2"; shift 2 ;;
    --project) need_value "$1" $#; project="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --create-flag) need_value "$1" $#; create_flags+=("$2"); shift 2 ;;
    --config) need_value "$1" $#; config="$2"; shift 2 ;;
    --workdir) need_value "$1" $#; workdir="$2"; shift 2 ;;
    --python-version) need_value "$1" $#; python_version="$2"; shift 2 ;;
    --poll) need_value "$1" $#; poll="$2"; shift 2 ;;
    --grace) need_value "$1" $#; grace="$2"; shift 2 ;;
    --log-dir) need_value "$1" $#; log_dir="$2"; shift 2 ;;
    --steps) need_value "$1" $#; steps_arg="$2"; shift 2 ;;
    --delete) delete=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    *) die "unknown argument '$1' (see --help; train flags go after --)" ;;
  esac
done

[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be lowercase letters, digits and -, got '$name'"
[[ $poll =~ ^[1-9][0-9]*$ ]] || die "--poll must be a positive number of seconds, got '$poll'"
[[ $grace =~ ^[0-9]+$ ]] || die "--grace must be a whole number of seconds, got '$grace'"
workdir="${workdir:-~/rag_jax_runs/$name}"
log_dir="${log_dir:-rag_jax_logs/$name}"
IFS=, read -r -a steps <<<"$steps_arg"
for step in "${steps[@]}"; do
  case "$step" in
    create|copy|install|run|watch|logs|stop|delete) ;;
    *) die "unknown step '$step' in --steps (create,copy,install,run,watch,logs,stop,delete)" ;;
  esac
done
if [[ $delete -eq 1 ]]; then
  steps+=(delete)
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
where=(--zone="$zone")
if [[ -n $project ]]; then
  where+=(--project="$project")
fi

# Prints the command (quoted, to stdout with --dry-run, else to stderr with a "+ ") and runs
# it unless --dry-run.
run() {
  if [[ $dry_run -eq 1 ]]; then
    quote_all "$@"
    echo
  else
    echo "+ $(quote_all "$@")" >&2
    "$@"
  fi
}

# Runs a shell command line on every worker.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"
}

step_create() {
  local flags=(--accelerator-type="$accelerator_type" --version="$runtime_version")
  if [[ $spot -eq 1 ]]; then
    flags+=(--spot)
  fi
  run gcloud compute tpus tpu-vm create "$name" "${where[@]}" "${flags[@]}" \
    "${create_flags[@]+"${create_flags[@]}"}"
}

step_copy() {
  local tarball
  if [[ $dry_run -eq 1 ]]; then
    tarball="${TMPDIR:-/tmp}/rag_jax_code.XXXXXX.tar.gz"
    echo "git -C $(quote "$repo") ls-files -z --cached --others --exclude-standard" \
      "| tar -C $(quote "$repo") --null -T - -czf $(quote "$tarball")"
  else
    tarball="$(mktemp "${TMPDIR:-/tmp}/rag_jax_code.XXXXXX")"
    echo "+ tar of $repo (git ls-files --cached --others --exclude-standard) -> $tarball" >&2
    # Left out: tracked files deleted in the working tree, and fetched logs.
    git -C "$repo" ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' file; do
          if [[ -e $repo/$file && $file != rag_jax_logs/* ]]; then printf '%s\0' "$file"; fi
        done \
      | tar -C "$repo" --null -T - -czf "$tarball" || { rm -f "$tarball"; return 1; }
  fi
  local rc=0
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:rag_jax_code.tar.gz" "${where[@]}" \
    --worker=all || rc=$?
  if [[ $dry_run -eq 0 ]]; then
    rm -f "$tarball"
  fi
  [[ $rc -eq 0 ]] || return "$rc"
  on_all_workers "rm -rf ~/rag_jax_code && mkdir -p ~/rag_jax_code && tar -xzf ~/rag_jax_code.tar.gz -C ~/rag_jax_code"
}

step_install() {
  # shellcheck disable=SC2088  # ~ is expanded on the worker
  local uv="~/.local/bin/uv"
  on_all_workers "cd ~/rag_jax_code && { [ -x $uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh; } && $uv venv --allow-existing --python $(quote "$python_version") ~/rag_jax_venv && $uv pip install --python ~/rag_jax_venv/bin/python -e . \"jax[tpu]\""
}

train_command() {
  # shellcheck disable=SC2088  # ~ is expanded on the worker
  local words="~/rag_jax_venv/bin/python -m rag_jax.train"
  words+=" --config $(quote_remote_path "$config")"
  words+=" --workdir $(quote_remote_path "$workdir")"
  if [[ ${#extra[@]} -gt 0 ]]; then
    words+=" $(quote_all "${extra[@]}")"
  fi
  printf '%s' "$words"
}

step_run() {
  on_all_workers "cd ~/rag_jax_code && bash launch/tpu_worker.sh start $(train_command)"
}

step_stop() {
  on_all_workers "bash ~/rag_jax_code/launch/tpu_worker.sh stop $grace"
}

watch_interrupted() {
  echo >&2
  echo "tpu_pod.sh: stopped watching; the job keeps running on $name. Watch again:" >&2
  echo "  launch/tpu_pod.sh --name $name --zone $zone --steps watch,logs" >&2
  echo "stop it: launch/tpu_pod.sh --name $name --zone $zone --steps stop" >&2
  exit 130
}

step_watch() {
  local status_command="bash ~/rag_jax_code/launch/tpu_worker.sh status"
  if [[ $dry_run -eq 1 ]]; then
    echo "# every ${poll}s until all workers have exited, one line per worker:"
    on_all_workers "$status_command"
    echo "# as soon as one worker has exited non-zero or died, on all workers:"
    step_stop
    return
  fi
  local out lines failures=0 running total failed
  trap watch_interrupted INT
  while true; do
    if ! out="$(gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
        --command="$status_command")"; then
      failures=$((failures + 1))
      echo "tpu_pod.sh: status check failed ($failures in a row)" >&2
      if [[ $failures -ge 5 ]]; then
        echo "tpu_pod.sh: giving up watching; the job may still be running" >&2
        trap - INT
        return 1
      fi
      sleep "$poll"
      continue
    fi
    failures=0
    lines="$(grep '^rag_jax_worker ' <<<"$out" || true)"
    echo "--- $(date '+%F %T')" >&2
    printf '%s\n' "$lines" >&2
    total="$(grep -c . <<<"$lines" || true)"
    running="$(awk '$3 == "running"' <<<"$lines" | grep -c . || true)"
    failed="$(awk '$3 != "running" && $3 != "0"' <<<"$lines" | grep -c . || true)"
    if [[ $failed -gt 0 ]]; then
      echo "tpu_pod.sh: $failed worker(s) failed; stopping all workers" >&2
      trap - INT
      step_stop || true
      return 1
    fi
    if [[ $total -gt 0 && $running -eq 0 ]]; then
      echo "tpu_pod.sh: all $total workers exited 0" >&2
      trap - INT
      return 0
    fi
    sleep "$poll"
  done
}

step_logs() {
  # gcloud copies files back from one worker at a time only; `--output-directory` writes each
  # worker's output of the command to LOG_DIR/<worker index>.log.
  if [[ $dry_run -eq 0 ]]; then
    mkdir -p "$log_dir"
  fi
  # shellcheck disable=SC2016  # expanded on the worker
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
    --command='cat ~/rag_jax_worker_$(hostname).log' --output-directory="$log_dir" || return
  if [[ $dry_run -eq 0 ]]; then
    echo "tpu_pod.sh: worker logs in $log_dir/<worker>.log" >&2
  fi
}

step_delete() {
  run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
}

# A failed step skips the rest but `logs` (once the job has started) and `delete`; the script
# exits with the first failure's status.
status=0
started=0
for step in "${steps[@]}"; do
  if [[ $status -ne 0 ]]; then
    if [[ $step == delete || ($step == logs && $started -eq 1) ]]; then
      :
    else
      continue
    fi
  fi
  if [[ $dry_run -eq 1 ]]; then
    echo "# $step"
  fi
  if [[ $step == run || $step == watch ]]; then
    started=1
  fi
  rc=0
  "step_$step" || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "tpu_pod.sh: step '$step' failed (status $rc)" >&2
    [[ $status -ne 0 ]] || status=$rc
  fi
done
exit "$status"
