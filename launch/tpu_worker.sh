#!/usr/bin/env bash
# What launch/tpu_pod.sh runs on every worker of a TPU VM or pod (it ships with the code):
# starts the training command detached from the ssh session, reports its state, stops it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_worker.sh start COMMAND [ARGS...]
       launch/tpu_worker.sh status
       launch/tpu_worker.sh stop [GRACE_SECONDS]
       launch/tpu_worker.sh --dry-run start|status|stop ...

Run on one worker (launch/tpu_pod.sh runs it on all of them with `--worker=all`).

  start   runs COMMAND in its own session, detached from the ssh connection, stdout and
          stderr to DIR/rag_jax_worker_<hostname>.log; its process group id goes to
          DIR/rag_jax_worker.pid and, when it ends, its exit status to
          DIR/rag_jax_worker.status. Refuses to start while a previous run is alive.
  status  prints one line: `rag_jax_worker <hostname> <state> <last log line>`, state being
          `running`, the exit status (0 = success), `stopped` or `gone` (ended without status).
  stop    SIGTERM to the run's process group, SIGKILL after GRACE_SECONDS (default 30) if
          it is still alive; records `stopped`.

DIR is $RAG_JAX_WORKER_DIR, default $HOME.
EOF
}

dry_run=0
if [[ ${1:-} == --dry-run ]]; then
  dry_run=1
  shift
fi
action="${1:-}"
[[ -n $action ]] || { usage >&2; exit 2; }
shift

dir="${RAG_JAX_WORKER_DIR:-$HOME}"
host="$(hostname)"
log="$dir/rag_jax_worker_$host.log"
pid_file="$dir/rag_jax_worker.pid"
status_file="$dir/rag_jax_worker.status"

# The wrapper around the command: runs it, then records its exit status.
# shellcheck disable=SC2016  # $@, $? and the variable belong to the inner shell
inner='"$@"; echo "$?" > "$RAG_JAX_WORKER_STATUS"'

# True while the recorded run has not ended: no status recorded and a live member of its
# process group.
alive() {
  local pgid
  [[ ! -s $status_file && -s $pid_file ]] || return 1
  pgid="$(<"$pid_file")"
  kill -0 -- "-$pgid" 2>/dev/null
}

case "$action" in
  -h|--help)
    usage
    ;;
  start)
    [[ $# -gt 0 ]] || { echo "tpu_worker.sh: start needs a COMMAND" >&2; exit 2; }
    if [[ $dry_run -eq 1 ]]; then
      printf "RAG_JAX_WORKER_STATUS=%q setsid nohup bash -c '%s' rag_jax_worker" "$status_file" \
        "$inner"
      printf ' %q' "$@"
      printf ' < /dev/null > %q 2>&1 &\n' "$log"
      exit 0
    fi
    if alive; then
      echo "tpu_worker.sh: a run is still alive on $host (process group $(<"$pid_file"));" \
        "stop it first" >&2
      exit 1
    fi
    mkdir -p "$dir"
    rm -f "$status_file"
    # A background child of this (non-interactive) shell leads no process group, so setsid
    # makes it the leader of a new session and group without forking: $! is the group id.
    RAG_JAX_WORKER_STATUS="$status_file" setsid nohup bash -c "$inner" rag_jax_worker "$@" \
      </dev/null >"$log" 2>&1 &
    echo "$!" >"$pid_file"
    echo "tpu_worker.sh: started on $host (process group $!), log $log"
    ;;
  status)
    if [[ -s $status_file ]]; then
      state="$(<"$status_file")"
    elif alive; then
      state=running
    elif [[ -s $pid_file ]]; then
      state=gone
    else
      state=none
    fi
    last=""
    if [[ -f $log ]]; then
      last="$(tail -c 4096 "$log" | tr '\r' '\n' | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-200 || true)"
    fi
    echo "rag_jax_worker $host $state $last"
    ;;
  stop)
    grace="${1:-30}"
    if [[ $dry_run -eq 1 ]]; then
      # shellcheck disable=SC2016  # printed, not run
      printf 'kill -TERM -- -$(cat %q)  # then SIGKILL after %ss\n' "$pid_file" "$grace"
      exit 0
    fi
    if ! alive; then
      echo "tpu_worker.sh: nothing running on $host"
      exit 0
    fi
    pgid="$(<"$pid_file")"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      alive || break
      sleep 0.1
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    [[ -s $status_file ]] || echo stopped >"$status_file"
    echo "tpu_worker.sh: stopped process group $pgid on $host"
    ;;
  *)
    echo "tpu_worker.sh: unknown action '$action' (start, status or stop)" >&2
    exit 2
    ;;
esac
