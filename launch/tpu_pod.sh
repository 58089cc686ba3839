#!/usr/bin/env bash
# Runs genemask-jax pretraining on a Cloud TPU VM slice (one JAX process per TPU VM host):
# creates the slice (or reuses it), copies this checkout (or clones --repo) to every
# worker, installs it with `pip install -e .[tpu]` into a Python >= 3.11 virtualenv, runs
# main.py on all workers at once, streams the output, and deletes the slice on request.
#
#   launch/tpu_pod.sh --name=gm-v4 --zone=us-central2-b --accelerator-type=v4-32 \
#     --config=configs/pretrain.py:paper --workdir=gs://my-bucket/genemask/paper
#
# main.py is started with --multihost: jax.distributed.initialize() then finds the
# coordinator, process count and process index from the TPU VM metadata itself.
# Before any VM is created or reused, the train step is compiled here, on this machine,
# for the accelerator type (python -m genemask_jax.aot, needs `pip install '.[aot]'`):
# a config that does not fit the chips' HBM stops the launch (--skip-aot-check skips it).
# --dry-run prints every command (gcloud, git, the check) instead of running it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [options] [-- extra main.py flags...]

Slice (flag, or environment variable):
  --name=NAME              TPU_NAME           TPU VM name (required)
  --zone=ZONE              TPU_ZONE           e.g. us-central2-b (required)
  --project=PROJECT        TPU_PROJECT        default: gcloud's configured project
  --accelerator-type=TYPE  TPU_ACCELERATOR_TYPE  default: v4-32 (v5e: v5litepod-16, ...)
  --version=RUNTIME        TPU_RUNTIME_VERSION default from the type: tpu-ubuntu2204-base
                                              (v4), v2-alpha-tpuv5-lite (v5e),
                                              v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)
  --spot                   TPU_SPOT=1         create a Spot slice

Code and training:
  --config=CONFIG          CONFIG             default: configs/pretrain.py:paper
  --workdir=gs://...       WORKDIR            checkpoints and logs (required; gs:// so that
                                              every worker sees the same directory)
  --repo=URL               REPO_URL           git clone URL on every worker instead of
                                              copying `git archive HEAD` of this checkout
  --ref=REF                REPO_REF           branch or tag to clone with --repo
  --python-version=X.Y     TPU_PYTHON_VERSION Python of the worker virtualenv (default 3.11)
  --env=KEY=VALUE                             environment variable for main.py on every
                                              worker (repeatable), e.g. LIBTPU_INIT_ARGS=...
  --skip-setup                                reuse the code and virtualenv already there
  --skip-aot-check         TPU_SKIP_AOT_CHECK=1  do not compile the step locally first
  --aot-python=PYTHON      TPU_AOT_PYTHON     Python with genemask_jax[aot] for the check
                                              (default: python3)
  --log-file=FILE          TPU_LOG_FILE       local copy of the streamed output
                                              (default: $TMPDIR/genemask-tpu-NAME-TIME.log)
  --allow-local-workdir                       accept a --workdir that is not gs://

Lifecycle:
  --delete                 delete the slice after the run, whether it succeeded or not
  --delete-only            delete the slice and exit
  --dry-run                print every command instead of running it
  -h, --help               this message

Everything after `--` is passed to main.py unchanged.
Multi-worker ssh needs your key in the agent first: ssh-add ~/.ssh/google_compute_engine
EOF
}

die() {
  echo "tpu_pod.sh: error: $*" >&2
  echo "Run 'launch/tpu_pod.sh --help' for usage." >&2
  exit 2
}

# Quotes one word for a POSIX shell, leaving plain words readable.
shell_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(shell_quote "$word")"
  done
  printf '%s' "$out"
}

name="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
project="${TPU_PROJECT:-}"
accelerator_type="${TPU_ACCELERATOR_TYPE:-v4-32}"
runtime_version="${TPU_RUNTIME_VERSION:-}"
spot="${TPU_SPOT:-0}"
config="${CONFIG:-configs/pretrain.py:paper}"
workdir="${WORKDIR:-}"
repo_url="${REPO_URL:-}"
repo_ref="${REPO_REF:-}"
python_version="${TPU_PYTHON_VERSION:-3.11}"
log_file="${TPU_LOG_FILE:-}"
skip_setup=0
skip_aot_check="${TPU_SKIP_AOT_CHECK:-0}"
aot_python="${TPU_AOT_PYTHON:-python3}"
allow_local_workdir=0
delete_after=0
delete_only=0
dry_run=0
extra_flags=()
remote_env=()

needs_value() { [[ $# -ge 2 ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  opt="$1"
  value=""
  case "$opt" in
    --*=*) value="${opt#*=}"; opt="${opt%%=*}" ;;
    --name|--zone|--project|--accelerator-type|--version|--config|--workdir|--repo|--ref|\
    --python-version|--log-file|--env|--aot-python)
      needs_value "$@"; value="$2"; shift ;;
  esac
  case "$opt" in
    -h|--help) usage; exit 0 ;;
    --name) name="$value" ;;
    --zone) zone="$value" ;;
    --project) project="$value" ;;
    --accelerator-type) accelerator_type="$value" ;;
    --version) runtime_version="$value" ;;
    --spot) spot=1 ;;
    --config) config="$value" ;;
    --workdir) workdir="$value" ;;
    --repo) repo_url="$value" ;;
    --ref) repo_ref="$value" ;;
    --python-version) python_version="$value" ;;
    --log-file) log_file="$value" ;;
    --env)
      [[ "$value" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env expects KEY=VALUE, got '$value'"
      remote_env+=("$value") ;;
    --skip-setup) skip_setup=1 ;;
    --skip-aot-check) skip_aot_check=1 ;;
    --aot-python) aot_python="$value" ;;
    --allow-local-workdir) allow_local_workdir=1 ;;
    --delete) delete_after=1 ;;
    --delete-only) delete_only=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra_flags=("$@"); break ;;
    *) die "unknown option '$1' (main.py flags go after --)" ;;
  esac
  shift
done

[[ -n "$name" ]] || die "missing --name (or TPU_NAME): the TPU VM to create or reuse"
[[ -n "$zone" ]] || die "missing --zone (or TPU_ZONE), e.g. us-central2-b for v4"

gcloud_flags=("--zone=$zone")
[[ -z "$project" ]] || gcloud_flags+=("--project=$project")
tpu=(gcloud compute tpus tpu-vm)

# Runs a command, or prints it under --dry-run.
run() {
  if (( dry_run )); then
    echo "+ $(quote_all "$@")"
  else
    echo "tpu_pod.sh: $(quote_all "$@")" >&2
    "$@"
  fi
}

delete_slice() {
  run "${tpu[@]}" delete "$name" "${gcloud_flags[@]}" --quiet
}

if (( delete_only )); then
  delete_slice
  exit 0
fi

[[ -n "$workdir" ]] || die "missing --workdir (or WORKDIR), e.g. gs://my-bucket/genemask/run1"
if [[ "$workdir" != gs://* ]] && (( ! allow_local_workdir )); then
  die "--workdir '$workdir' is not a gs:// path; every worker writes checkpoints to the" \
    "same directory, so it must be shared (pass --allow-local-workdir for a shared mount)"
fi
[[ -n "$config" ]] || die "--config is empty"
if [[ -z "$runtime_version" ]]; then
  case "$accelerator_type" in
    v4-*) runtime_version="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) runtime_version="v2-alpha-tpuv5-lite" ;;
    v5p-*) runtime_version="v2-alpha-tpuv5" ;;
    v6e-*) runtime_version="v2-alpha-tpuv6e" ;;
    *) die "no default runtime version for accelerator type '$accelerator_type';" \
         "pass --version (see: gcloud compute tpus tpu-vm versions list --zone=$zone)" ;;
  esac
fi
if [[ -z "$log_file" ]]; then
  log_file="${TMPDIR:-/tmp}/genemask-tpu-$name-$(date +%Y%m%d-%H%M%S).log"
fi

# Remote layout, relative to the worker's home directory.
remote_dir=genemask-jax
remote_venv=genemask-venv
remote_tarball=genemask-jax.tar.gz
remote_log=genemask-jax-train.log

# 0. Does the step fit the chips? Compiled here for the accelerator type, with the same
#    config and --config.* overrides main.py gets; exit 1 = does not fit, 2 = bad input.
if (( ! skip_aot_check )); then
  repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  aot=("$aot_python" -m genemask_jax.aot "--topology=$accelerator_type" "--config=$config")
  for flag in ${extra_flags[@]+"${extra_flags[@]}"}; do
    [[ "$flag" != --config.* ]] || aot+=("$flag")
  done
  if (( dry_run )); then
    echo "+ (cd $(shell_quote "$repo_root") && $(quote_all "${aot[@]}"))"
  else
    echo "tpu_pod.sh: checking that the step fits a $accelerator_type:" \
      "$(quote_all "${aot[@]}")" >&2
    aot_status=0
    (cd "$repo_root" && "${aot[@]}") || aot_status=$?
    case "$aot_status" in
      0) ;;
      1) echo "tpu_pod.sh: error: the train step does not fit a $accelerator_type (above);" \
           "use a larger slice, --config.train.grad_accum_steps, --config.model.remat or" \
           "bfloat16, or pass --skip-aot-check" >&2
         exit 1 ;;
      *) echo "tpu_pod.sh: error: the compile check failed (status $aot_status; above);" \
           "install it with: $aot_python -m pip install '.[aot]', or pass --skip-aot-check" >&2
         exit 2 ;;
    esac
  fi
fi

# 1. The slice: reuse it if it exists, create it otherwise.
describe=("${tpu[@]}" describe "$name" "${gcloud_flags[@]}" "--format=value(state,acceleratorType)")
create=("${tpu[@]}" create "$name" "${gcloud_flags[@]}" "--accelerator-type=$accelerator_type"
        "--version=$runtime_version")
(( ! spot )) || create+=(--spot)
if (( dry_run )); then
  run "${describe[@]}"
  echo "# only if the describe above fails (no such TPU):"
  run "${create[@]}"
else
  echo "tpu_pod.sh: $(quote_all "${describe[@]}")" >&2
  if info="$("${describe[@]}" 2>/dev/null)"; then
    read -r state existing_type <<< "$info"
    if [[ "$state" != READY ]]; then
      echo "tpu_pod.sh: error: TPU '$name' exists but is in state '$state', not READY;" \
        "wait for it or delete it (--delete-only)" >&2
      exit 1
    fi
    echo "tpu_pod.sh: reusing TPU '$name' ($existing_type, $state)" >&2
    if [[ -n "${existing_type:-}" && "$existing_type" != "$accelerator_type" ]]; then
      echo "tpu_pod.sh: warning: TPU '$name' is a $existing_type, not the requested" \
        "$accelerator_type; the global batch must fit its device count" >&2
    fi
  else
    run "${create[@]}"
  fi
fi

if (( delete_after )); then
  # From here on, the slice goes away however the run ends (failure, Ctrl-C).
  trap 'delete_slice' EXIT
fi

# 2. Code and install on every worker.
venv_python="../$remote_venv/bin/python"
install_cmd="{ [ -x $remote_venv/bin/python ] || { python3 -m pip install --user --upgrade uv"
install_cmd+=" && python3 -m uv venv --seed --python $(shell_quote "$python_version")"
install_cmd+=" $remote_venv; }; } && cd $remote_dir && $venv_python -m pip install --upgrade pip"
install_cmd+=" && $venv_python -m pip install -e '.[tpu]'"
if (( ! skip_setup )); then
  if [[ -n "$repo_url" ]]; then
    clone=(git clone --depth=1)
    [[ -z "$repo_ref" ]] || clone+=("--branch=$repo_ref")
    clone+=("$repo_url" "$remote_dir")
    fetch_cmd="rm -rf $remote_dir && $(quote_all "${clone[@]}")"
  else
    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    git -C "$repo_root" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
      || die "$repo_root is not a git checkout; pass --repo=URL to clone on the workers"
    if [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no)" ]]; then
      echo "tpu_pod.sh: warning: uncommitted changes are NOT copied (git archive HEAD)" >&2
    fi
    tarball="${TMPDIR:-/tmp}/genemask-jax-$name.tar.gz"
    run git -C "$repo_root" archive --format=tar.gz -o "$tarball" HEAD
    run "${tpu[@]}" scp "$tarball" "$name:$remote_tarball" --worker=all "${gcloud_flags[@]}"
    fetch_cmd="rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf $remote_tarball -C $remote_dir"
  fi
  run "${tpu[@]}" ssh "$name" --worker=all "${gcloud_flags[@]}" \
    "--command=set -e; $fetch_cmd && $install_cmd"
fi

# 3. Train on all workers at once; output streams back and is kept on both sides.
train=("$venv_python" main.py --multihost "--config=$config" "--workdir=$workdir")
train+=(${extra_flags[@]+"${extra_flags[@]}"})
train_cmd="set -o pipefail; cd $remote_dir && PYTHONUNBUFFERED=1"
for kv in ${remote_env[@]+"${remote_env[@]}"}; do
  train_cmd+=" ${kv%%=*}=$(shell_quote "${kv#*=}")"  # Only the value quoted: still an assignment.
done
train_cmd+=" $(quote_all "${train[@]}")"
train_cmd+=" 2>&1 | tee -a ../$remote_log"
ssh_train=("${tpu[@]}" ssh "$name" --worker=all "${gcloud_flags[@]}" "--command=$train_cmd")
if (( dry_run )); then
  echo "+ $(quote_all "${ssh_train[@]}") | tee -a $(shell_quote "$log_file")"
  exit 0
fi
echo "tpu_pod.sh: $(quote_all "${ssh_train[@]}")" >&2
echo "tpu_pod.sh: streaming to $log_file (and ~/$remote_log on each worker)" >&2
status=0
"${ssh_train[@]}" 2>&1 | tee -a "$log_file" || status=$?
if (( status != 0 )); then
  echo "tpu_pod.sh: training failed with status $status; see $log_file" >&2
fi
exit "$status"
