#!/usr/bin/env bash
# Runs N JAX processes on this machine (127.0.0.1, CPU devices, gloo collectives), each
# executing main.py with explicit multi-host flags, to try the multi-host path without a
# cluster:
#
#   launch/local_multihost.sh 2 --config=configs/pretrain.py:test --workdir=/tmp/mh
#
# Process i runs
#   $PYTHON main.py --coordinator=127.0.0.1:PORT --num_processes=N --process_id=i <flags>
# with JAX_PLATFORMS=cpu and --xla_force_host_platform_device_count=K in XLA_FLAGS.
# Output lines are prefixed with [pI] and also written to LOG_DIR/pI.log. If any process
# fails the others are killed and the script exits with that process's status.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multihost.sh [options] N [main.py flags...]

Starts N processes on 127.0.0.1, process i running
  $PYTHON MAIN --coordinator=127.0.0.1:PORT --num_processes=N --process_id=i [flags...]
with JAX_PLATFORMS=cpu (gloo collectives) and K CPU devices per process.

Options (before N):
  --port=PORT         coordinator port (default: a free port picked automatically)
  --devices=K         CPU devices per process (default 1); replaces any
                      --xla_force_host_platform_device_count in XLA_FLAGS
  --log-dir=DIR       where pI.log files go (default: a new directory under $TMPDIR)
  --main=PATH         entry point (default: $MAIN, else main.py at the repository root)
  --timeout=SECONDS   kill every process after this long and fail (default 0: no limit)
  -h, --help          this message

Environment: PYTHON (default: python), MAIN (the entry point).
Relative paths in the flags (e.g. --config=configs/pretrain.py:test) are resolved from the
current directory.
EOF
}

die() {
  echo "local_multihost.sh: error: $*" >&2
  echo "Run 'launch/local_multihost.sh --help' for usage." >&2
  exit 2
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_bin="${PYTHON:-python}"
main="${MAIN:-$repo_root/main.py}"
port=""
devices=1
log_dir=""
timeout_s=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --port=*) port="${1#*=}" ;;
    --devices=*) devices="${1#*=}" ;;
    --log-dir=*) log_dir="${1#*=}" ;;
    --main=*) main="${1#*=}" ;;
    --timeout=*) timeout_s="${1#*=}" ;;
    --port|--devices|--log-dir|--main|--timeout)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --port) port="$2" ;;
        --devices) devices="$2" ;;
        --log-dir) log_dir="$2" ;;
        --main) main="$2" ;;
        --timeout) timeout_s="$2" ;;
      esac
      shift ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (options go before N; main.py flags after it)" ;;
    *) break ;;
  esac
  shift
done

[[ $# -ge 1 ]] || die "missing N, the number of processes"
num_processes="$1"
shift
is_positive() { [[ "$1" =~ ^[0-9]+$ ]] && (( 10#$1 >= 1 )); }
is_positive "$num_processes" || die "N must be a positive integer, got '$num_processes'"
is_positive "$devices" || die "--devices must be a positive integer, got '$devices'"
is_uint "$timeout_s" || die "--timeout must be a whole number of seconds, got '$timeout_s'"
[[ -f "$main" ]] || die "entry point '$main' not found (set --main or MAIN)"
command -v "$python_bin" >/dev/null 2>&1 \
  || die "python interpreter '$python_bin' not found (set PYTHON)"

if [[ -z "$port" ]]; then
  port="$("$python_bin" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
fi
if ! is_uint "$port" || (( 10#$port < 1 || 10#$port > 65535 )); then
  die "--port must be in 1..65535, got '$port'"
fi

if [[ -z "$log_dir" ]]; then
  log_dir="$(mktemp -d "${TMPDIR:-/tmp}/genemask-multihost.XXXXXX")"
fi
mkdir -p "$log_dir"

# XLA_FLAGS without any device count, plus ours.
xla_flags=()
read -r -a old_flags <<< "${XLA_FLAGS:-}"
for flag in ${old_flags[@]+"${old_flags[@]}"}; do
  [[ "$flag" == --xla_force_host_platform_device_count=* ]] || xla_flags+=("$flag")
done
xla_flags+=("--xla_force_host_platform_device_count=$devices")

echo "local_multihost.sh: $num_processes processes x $devices CPU device(s)," \
  "coordinator 127.0.0.1:$port, logs in $log_dir" >&2

pids=()
cleanup_done=0
kill_all() {
  # Politely first, then for good; only the processes this script started.
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  local waited=0
  while (( waited < 50 )); do
    local alive=0
    for pid in ${pids[@]+"${pids[@]}"}; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    (( alive )) || break
    sleep 0.1
    waited=$(( waited + 1 ))
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill -KILL "$pid" 2>/dev/null || true
  done
}
on_signal() {
  if (( ! cleanup_done )); then
    cleanup_done=1
    echo "local_multihost.sh: interrupted; stopping all processes" >&2
    kill_all
  fi
  exit 130
}
trap on_signal INT TERM

for (( i = 0; i < num_processes; i++ )); do
  # Each process: no inherited cluster settings, so jax.distributed uses our flags only.
  env -u SLURM_JOB_ID -u SLURM_STEP_NODELIST -u SLURM_NTASKS -u SLURM_PROCID \
    -u SLURM_LOCALID -u JAX_COORDINATOR_ADDRESS -u JAX_LOCAL_DEVICE_IDS \
    JAX_PLATFORMS=cpu XLA_FLAGS="${xla_flags[*]}" PYTHONUNBUFFERED=1 \
    "$python_bin" "$main" \
      --coordinator="127.0.0.1:$port" --num_processes="$num_processes" --process_id="$i" \
      "$@" \
    > >(tee "$log_dir/p$i.log" | awk -v p="[p$i] " '{ print p $0; fflush() }') 2>&1 &
  pids+=("$!")
done

# Poll rather than `wait -n` so this also runs on the bash 3.2 of macOS.
status=0
failed=""
start=$SECONDS
remaining=$num_processes
declare -a done_flags
while (( remaining > 0 )); do
  for (( i = 0; i < num_processes; i++ )); do
    [[ -z "${done_flags[i]:-}" ]] || continue
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      rc=0
      wait "${pids[i]}" || rc=$?
      done_flags[i]=1
      remaining=$(( remaining - 1 ))
      if (( rc != 0 )); then
        status=$rc
        failed=$i
        break 2
      fi
    fi
  done
  if (( timeout_s > 0 && SECONDS - start >= timeout_s )); then
    echo "local_multihost.sh: timed out after ${timeout_s}s; stopping all processes" >&2
    status=124
    break
  fi
  sleep 0.2
done

if (( status != 0 )); then
  if [[ -n "$failed" ]]; then
    echo "local_multihost.sh: process $failed exited with status $status" \
      "(log: $log_dir/p$failed.log); stopping the others" >&2
  fi
  cleanup_done=1
  kill_all
  wait 2>/dev/null || true
  exit "$status"
fi
wait 2>/dev/null || true  # Lets the [pI] prefixers flush.
echo "local_multihost.sh: all $num_processes processes finished; logs in $log_dir" >&2
