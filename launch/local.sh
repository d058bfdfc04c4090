#!/usr/bin/env bash
# Starts NUM_PROCESSES local processes of the same command on CPU devices, wired together as
# one multi-host JAX job. Run `launch/local.sh --help` for the flags; launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh [OPTIONS] [NUM_PROCESSES COMMAND [ARGS...]]

Starts NUM_PROCESSES copies of COMMAND on this machine as one multi-host JAX job on CPU
devices. Process i gets these environment variables (rag_jax reads the first three and calls
jax.distributed.initialize with them):

  RAG_JAX_COORDINATOR=127.0.0.1:PORT   process 0 serves the coordinator on PORT (a free port)
  RAG_JAX_NUM_PROCESSES=NUM_PROCESSES
  RAG_JAX_PROCESS_ID=i                 0 .. NUM_PROCESSES-1
  JAX_PLATFORMS=cpu
  XLA_FLAGS=--xla_force_host_platform_device_count=D   (other flags already in XLA_FLAGS are kept)

Each process writes its stdout and stderr to LOGDIR/process_<i>.log; process 0 is also shown
here. When a process exits non-zero, the others get SIGTERM (SIGKILL after the grace period)
and the script exits with that status; it exits 0 when all processes exit 0.

With no NUM_PROCESSES and COMMAND, it runs 2 processes of
  python -m rag_jax.train --config experiments/fever.py:tiny --workdir ${TMPDIR:-/tmp}/rag_jax-local-fever-tiny

Options:
  --devices-per-process D   CPU devices per process (default 4)
  --log-dir DIR             where the logs go (default: $LOGDIR, else a new temporary directory)
  --port PORT               coordinator port (default: a free port)
  --grace SECONDS           wait this long after SIGTERM before SIGKILL (default 10)
  --dry-run                 print the commands instead of running them
  -h, --help                this help

Example:
  launch/local.sh 2 python -c 'import os; print(os.environ["RAG_JAX_PROCESS_ID"])'
EOF
}

die() {
  echo "local.sh: $*" >&2
  exit 2
}

# shellcheck source=launch/quote.bash
source "$(dirname "${BASH_SOURCE[0]}")/quote.bash"

devices=4
log_dir="${LOGDIR:-}"
port=""
grace=10
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices-per-process) [[ $# -ge 2 ]] || die "$1 needs a value"; devices="$2"; shift 2 ;;
    --devices-per-process=*) devices="${1#*=}"; shift ;;
    --log-dir) [[ $# -ge 2 ]] || die "$1 needs a value"; log_dir="$2"; shift 2 ;;
    --log-dir=*) log_dir="${1#*=}"; shift ;;
    --port) [[ $# -ge 2 ]] || die "$1 needs a value"; port="$2"; shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    --grace) [[ $# -ge 2 ]] || die "$1 needs a value"; grace="$2"; shift 2 ;;
    --grace=*) grace="${1#*=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done

if [[ $# -eq 0 ]]; then
  set -- 2 python -m rag_jax.train --config experiments/fever.py:tiny \
    --workdir "${TMPDIR:-/tmp}/rag_jax-local-fever-tiny"
fi
num_processes="$1"
shift
[[ $num_processes =~ ^[1-9][0-9]*$ ]] || die "NUM_PROCESSES must be a positive integer, got '$num_processes'"
[[ $# -gt 0 ]] || die "no COMMAND after NUM_PROCESSES (see --help)"
[[ $devices =~ ^[1-9][0-9]*$ ]] || die "--devices-per-process must be a positive integer, got '$devices'"
[[ $grace =~ ^[0-9]+$ ]] || die "--grace must be a whole number of seconds, got '$grace'"
[[ -z $port || $port =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"

if [[ -z $port ]]; then
  python_bin="$(command -v python3 || command -v python || true)"
  [[ -n $python_bin ]] || die "no python3 or python on PATH to pick a free port; pass --port"
  port="$("$python_bin" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
fi

# XLA_FLAGS: the caller's flags, without any device count of theirs, then ours.
xla_flags=""
for flag in ${XLA_FLAGS:-}; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || xla_flags+="$flag "
done
xla_flags+="--xla_force_host_platform_device_count=$devices"

env_for() {
  printf '%s\n' "RAG_JAX_COORDINATOR=127.0.0.1:$port" "RAG_JAX_NUM_PROCESSES=$num_processes" \
    "RAG_JAX_PROCESS_ID=$1" "JAX_PLATFORMS=cpu" "XLA_FLAGS=$xla_flags"
}

if [[ $dry_run -eq 1 ]]; then
  shown_dir="${log_dir:-${TMPDIR:-/tmp}/rag_jax_local.XXXXXX}"
  echo "mkdir -p $(quote "$shown_dir")"
  for ((i = 0; i < num_processes; i++)); do
    mapfile -t vars < <(env_for "$i")
    redirect="> $(quote "$shown_dir/process_$i.log") 2>&1 &"
    [[ $i -eq 0 ]] && redirect="2>&1 | tee $(quote "$shown_dir/process_$i.log") &"
    echo "$(quote_all env "${vars[@]}" "$@") $redirect"
  done
  echo "# then wait; when one exits non-zero, SIGTERM the others (SIGKILL after ${grace}s)"
  exit 0
fi

if [[ -z $log_dir ]]; then
  log_dir="$(mktemp -d "${TMPDIR:-/tmp}/rag_jax_local.XXXXXX")"
fi
mkdir -p "$log_dir"
echo "local.sh: $num_processes processes x $devices CPU devices, coordinator 127.0.0.1:$port," \
  "logs in $log_dir" >&2

# Job control: every process gets its own process group, so that stopping it also stops
# whatever it started.
set -m
pids=()
tee_pid=""

stop_all() {
  local pid alive waited=0
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  while ((waited < grace * 10)); do
    alive=0
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    sleep 0.1
    waited=$((waited + 1))
  done
  for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}

# shellcheck disable=SC2329  # called by the trap below
on_signal() {
  echo "local.sh: interrupted; stopping all processes" >&2
  stop_all
  exit 130
}
trap on_signal INT TERM HUP

for ((i = 0; i < num_processes; i++)); do
  mapfile -t vars < <(env_for "$i")
  log="$log_dir/process_$i.log"
  if [[ $i -eq 0 ]]; then
    exec {tee_fd}> >(tee "$log")
    tee_pid=$!
    env "${vars[@]}" "$@" </dev/null >&"$tee_fd" 2>&1 &
    pids+=("$!")
    exec {tee_fd}>&-
  else
    env "${vars[@]}" "$@" </dev/null >"$log" 2>&1 &
    pids+=("$!")
  fi
done
# The process groups are made; without job control bash prints no "Terminated" lines.
set +m

# Poll: a process that has exited is reaped by bash, so `kill -0` fails for it and `wait`
# gives its status.
status=0
remaining=("${!pids[@]}")
while [[ ${#remaining[@]} -gt 0 ]]; do
  still=()
  for i in "${remaining[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      still+=("$i")
      continue
    fi
    rc=0
    wait "${pids[$i]}" 2>/dev/null || rc=$?
    if [[ $rc -ne 0 && $status -eq 0 ]]; then
      status=$rc
      echo "local.sh: process $i exited with status $rc; stopping the others." \
        "Its log: $log_dir/process_$i.log" >&2
      if [[ $i -ne 0 ]]; then
        echo "--- last lines of process $i ---" >&2
        tail -n 20 "$log_dir/process_$i.log" >&2 || true
        echo "---" >&2
      fi
    fi
  done
  remaining=("${still[@]+"${still[@]}"}")
  if [[ $status -ne 0 ]]; then
    stop_all
    break
  fi
  [[ ${#remaining[@]} -eq 0 ]] || sleep 0.2
done

trap - INT TERM HUP
if [[ -n $tee_pid ]]; then
  wait "$tee_pid" 2>/dev/null || true
fi
if [[ $status -eq 0 ]]; then
  echo "local.sh: all $num_processes processes exited 0; logs in $log_dir" >&2
fi
exit "$status"
