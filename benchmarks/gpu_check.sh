#!/usr/bin/env bash
# The prepared GPU check of issue #14: versions and device, the bf16 train-step bench (JAX with
# "auto" attention and with the fused Pallas kernel vs HF PyTorch, tokens/s, MFU, kernels ranked
# by time), 60 steps of `main.py :paper` (tokens/s, MFU from its log) and the GPU test subset,
# then the compiled Pallas kernel's tests if time is left, each under its own `timeout`, in <= 8 min on
# one H200 with the CUDA image of ../shared/GPU.md. The record (docs/gpu_check.txt) is written
# as it goes; `benchmarks/run_all.py` copies it into docs/benchmarks.md with the device named.
#
#   benchmarks/gpu_check.sh --prepare     # dev machine, project root: wheels the image lacks
#                                         # into .whl/, test data into .gpu_data/ (~20 MB)
#   benchmarks/gpu_check.sh               # GPU machine, project root, .whl/ and .gpu_data/ beside
#   benchmarks/gpu_check.sh --cpu_smoke   # any machine: every step on CPU at toy sizes
#
# With the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_data"],
# timeout_s=540); the record and the kernel ranking come back from $OUT.
# Step time limits (seconds) can be changed with T_SETUP, T_BENCH, T_MAIN and T_TESTS. When at
# least T_EXTRA seconds of the T_TOTAL budget are left, a last step runs the compiled Pallas
# kernel's tests (tests/test_attention_gpu.py).
set -uo pipefail

mode=gpu
record=docs/gpu_check.txt
for arg in "$@"; do
  case "$arg" in
    --prepare) mode=prepare ;;
    --cpu_smoke) mode=cpu_smoke; record=${TMPDIR:-/tmp}/gpu_check_smoke.txt ;;
    --record=*) record=${arg#--record=} ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (expected --prepare, --cpu_smoke, --record=PATH)" >&2
       exit 2 ;;
  esac
done

if [[ ! -f main.py || ! -d genemask_jax ]]; then
  echo "gpu_check.sh: run it from the project root (where main.py is)" >&2
  exit 2
fi

if [[ $mode == prepare ]]; then
  data=${GENEMASK_DATA_DIR:-../shared/data}
  set -e
  ../shared/tools/gpu_wheels.sh .whl
  mkdir -p .gpu_data/genome .gpu_data/npmi
  cp "$data/genome/GRCh37_chr22_blocks.fa.gz" .gpu_data/genome/
  cp "$data/npmi/genemask_grch38_chr1-3_6mer_npmi.csv" .gpu_data/npmi/
  du -sh .whl .gpu_data
  echo "prepared; now on the GPU machine: bash benchmarks/gpu_check.sh (carry .whl and .gpu_data)"
  exit 0
fi

export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
out=${OUT:-$work/out}
mkdir -p "$out" "$(dirname "$record")"
: > "$record"
started=$(date +%s)

log() { printf '%s\n' "$*" | tee -a "$record"; }
# step NAME SECONDS CMD...: runs CMD under `timeout`, its output into the record as it comes.
step() {
  local name=$1 limit=$2 t0 rc shown
  shift 2
  shown="$*"
  [[ $shown == *$'\n'* ]] && shown="$1 -c <the inline script in gpu_check.sh>"
  log ""
  log "=== $name (limit ${limit} s): $shown"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$record"
  rc=${PIPESTATUS[0]}
  log "=== $name: exit $rc$([[ $rc == 124 || $rc == 137 ]] && echo ' (timed out)') after $(($(date +%s) - t0)) s"
  return 0
}

if [[ -d .whl ]] && compgen -G ".whl/*.whl" > /dev/null; then
  timeout 120 "$python" -m pip install -q --no-index --no-deps --no-compile \
    --target "$work/site" .whl/*.whl 2>&1 | grep -v '^WARNING' || true
  export PYTHONPATH="$work/site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -d .gpu_data/genome ]]; then
  export GENEMASK_DATA_DIR=${GENEMASK_DATA_DIR:-$PWD/.gpu_data}
else
  export GENEMASK_DATA_DIR=${GENEMASK_DATA_DIR:-$PWD/../shared/data}
fi

if [[ $mode == cpu_smoke ]]; then
  export JAX_PLATFORMS=cpu
  bench_args=(--sizes= --gpu --gpu_size=tiny --gpu_length=64 --gpu_batch=2 --rounds=1
              --steps_per_round=2 --warmup=0 --gpu_also=pallas_gpu)
  main_args=(--config.model.size=tiny --config.train.batch_size=4 --config.data.max_len=64
             --config.masking.max_predictions=16 --config.train.num_steps=4
             --config.train.log_every=2 --config.optim.warmup_steps=1
             --config.eval.num_examples=8 --config.eval.batch_size=4)
  test_env=(JAX_PLATFORMS=cpu)
  tests=(tests/test_attention.py -k "cudnn or auto_picks")
  T_BENCH=${T_BENCH:-300} T_MAIN=${T_MAIN:-300} T_TESTS=${T_TESTS:-300}
  T_TOTAL=${T_TOTAL:-100000} T_EXTRA=${T_EXTRA:-300}
  extra_tests=(tests/test_attention_gpu.py -k "model")  # Interpreted off the GPU: slow.
else
  bench_args=(--sizes= --gpu --gpu_batch=64 --rounds=3 --steps_per_round=4 --warmup=1
              --gpu_also=pallas_gpu)
  main_args=(--config.train.num_steps=60 --config.train.log_every=10
             --config.optim.warmup_steps=6 --config.eval.num_examples=200)
  test_env=(JAX_PLATFORMS=cuda XLA_FLAGS=)
  tests=(tests/test_attention.py tests/test_model.py tests/test_masking.py)
  T_BENCH=${T_BENCH:-190} T_MAIN=${T_MAIN:-150} T_TESTS=${T_TESTS:-120}
  T_TOTAL=${T_TOTAL:-470} T_EXTRA=${T_EXTRA:-45}
  extra_tests=(tests/test_attention_gpu.py -k "compiled or model")
fi
T_SETUP=${T_SETUP:-60}

log "gpu_check.sh ($mode) at $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
step "versions and device" "$T_SETUP" "$python" -c '
import importlib.metadata as md, jax
for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "transformers"):
  try:
    print(f"{dist} {md.version(dist)}")
  except md.PackageNotFoundError:
    print(f"{dist} not installed")
d = jax.devices()[0]
kind = getattr(d, "device_kind", d.platform)
print(f"device: {kind} ({d.platform}, {jax.device_count()} device(s))")
'
if command -v nvidia-smi > /dev/null; then
  step "nvidia-smi" 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi

step "bench_train_step (bf16 train step, JAX vs HF PyTorch, profile)" "$T_BENCH" \
  env XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 "$python" benchmarks/bench_train_step.py \
  "${bench_args[@]}" --profile="$work/prof" --profile_steps=3

step "main.py :paper, ${main_args[*]}" "$T_MAIN" \
  env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 "$python" main.py --config=configs/pretrain.py:paper \
  --workdir="$work/paper" "${main_args[@]}"
last=$(grep -E '^step [0-9]+/[0-9]+ ' "$record" | tail -1)
log "main.py last log line: ${last:-none}"

step "GPU test subset: ${tests[*]}" "$T_TESTS" \
  env "${test_env[@]}" "$python" -m pytest -q -p no:cacheprovider "${tests[@]}"

left=$((T_TOTAL - ($(date +%s) - started)))
if ((left >= T_EXTRA)); then
  step "Pallas kernel tests: ${extra_tests[*]}" "$((left - 5))" \
    env "${test_env[@]}" "$python" -m pytest -q -p no:cacheprovider "${extra_tests[@]}"
else
  log ""
  log "=== skipped the Pallas kernel tests: ${left} s left of ${T_TOTAL} s (T_EXTRA=${T_EXTRA})"
fi

log ""
log "gpu_check.sh done in $(($(date +%s) - started)) s"
rm -rf "$work/paper"  # The 60-step run's checkpoint (about 1 GB for :paper).
cp "$record" "$out/" 2>/dev/null || true
trace=$(find "$work/prof" -name 'perfetto_trace.json.gz' -size -16M 2>/dev/null | head -1)
[[ -n $trace ]] && cp "$trace" "$out/"
echo "record: $record; files: $out"
