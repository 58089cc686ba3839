#!/usr/bin/env bash
# Mutation testing of one core module with mutmut (not run in CI; see docs/testing.md).
#
#   bash tests/mutmut_module.sh masking [DIR]      # masking|npmi|tokenizer|attention|
#                                                  # model|train_step|metrics
#
# Copies the committed tree into DIR (default /tmp/genemask-mutmut-MODULE; kept, so a
# second run resumes where the first stopped), narrows setup.cfg's [mutmut] section to the
# module and its own test files (mutmut's first pass runs every listed test file), and
# runs mutmut on all cores with what makes JAX mutants affordable: JAX_PLATFORMS=cpu (jax
# reads it when mutmut's fork server imports it) and a persistent compilation cache (a
# mutant that leaves a jitted program unchanged reuses its compiled code; a changed
# program is a new cache key, so no mutant can hit another's code). Prints the survivors.
set -euo pipefail
module="${1:?usage: bash tests/mutmut_module.sh MODULE [DIR]}"
case "$module" in
  masking) src="genemask_jax/masking.py"; tests="tests/test_masking.py" ;;
  npmi) src="genemask_jax/npmi/checks.py genemask_jax/npmi/counting.py genemask_jax/npmi/scoring.py genemask_jax/npmi/table.py"
        tests="tests/test_npmi.py tests/test_input_checks.py" ;;
  tokenizer) src="genemask_jax/tokenizer.py"; tests="tests/test_tokenizer.py" ;;
  attention) src="genemask_jax/attention.py"
             tests="tests/test_attention.py tests/test_pallas_attention.py tests/test_aot.py::test_test_config_compiles_for_v5e_with_the_pallas_kernel_and_fits" ;;
  model) src="genemask_jax/model.py"
         tests="tests/test_model.py tests/test_remat.py tests/test_scan.py tests/test_hf.py::test_import_logits_equal_a_numpy_bert tests/test_hf.py::test_export_logits_equal_a_numpy_bert" ;;
  train_step) src="genemask_jax/train_step.py"; tests="tests/test_train_step.py tests/test_sharding.py" ;;
  metrics) src="genemask_jax/finetune/metrics.py"; tests="tests/test_metrics.py tests/test_fewshot.py" ;;
  *) echo "unknown module '$module': masking|npmi|tokenizer|attention|model|train_step|metrics" >&2
     exit 2 ;;
esac
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${2:-/tmp/genemask-mutmut-$module}"
mkdir -p "$dir"
# The committed tree (a resumed run keeps mutants/ and its results).
git -C "$repo" archive HEAD | tar -x -C "$dir"
python3 - "$dir/setup.cfg" "$src" "$tests" <<'EOF'
import configparser, sys
path, src, tests = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
text = open(path).read()
cfg = configparser.ConfigParser()
cfg.read_string(text)
if "mutmut" not in cfg:
  sys.exit(f"{path}: no [mutmut] section")
cfg["mutmut"]["only_mutate"] = "\n" + "\n".join(src)
cfg["mutmut"]["pytest_add_cli_args_test_selection"] = "\n" + "\n".join(tests)
with open(path, "w") as f:
  cfg.write(f)
EOF
cd "$dir"
export JAX_PLATFORMS=cpu
export GENEMASK_DATA_DIR="${GENEMASK_DATA_DIR:-$repo/../shared/data}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$dir/.jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
mutmut run
mutmut results | grep -v ": killed$" || true
