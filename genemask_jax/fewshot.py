r"""Few-shot evaluation binary: fine-tune and score models on the four GeneMask benchmarks.

    python -m genemask_jax.fewshot --checkpoint=WORKDIR --tasks=prom_core,splice_40 \
        --shots=10,50,100 --seeds=3 --output_dir=DIR
    python -m genemask_jax.fewshot --checkpoint=genemask=WD1,dnabert=WD2,baseline=random \
        --seeds=3 --output_dir=DIR                            # side by side, every shot
    python -m genemask_jax.fewshot --init=random --model_size=tiny --shots=10 --seeds=2 \
        --output_dir=DIR                                      # no-pretraining baseline
    python -m genemask_jax.fewshot --checkpoint=WORKDIR/checkpoints/1200 \
        --mode=linear_probe --max_test_examples=1000 --output_dir=DIR

Data: ``--data_dir`` or ``$GENEMASK_DATA_DIR`` (the directory holding ``fewshot/``).

Defaults are the authors' Script-B: full fine-tuning; 10/50/100-shot: batch 5, LR 1e-4,
20 epochs; 500/1000-shot: batch 15, LR 5e-5, 5 epochs; AdamW (wd 0.01, none on biases and
LayerNorm), 10% linear warm-up then linear decay, clip 1.0, dropout 0.1, max length =
k-mers + 2 of the task. Each ``--batch_size`` ... ``--max_len`` flag overrides its value
for every shot. No model selection happens: each run trains for its epochs and is scored
once on the test set, from which sequences present in the train set were removed (counts
reported). Prom-300 is scored on the GUE proxy test set (marked in every output).

The run itself is `genemask_jax.fewshot_lib.run`; this module only reads the flags.

Outputs in ``--output_dir``: ``results.csv`` (one row per model, task, shot, seed, metric),
``results.md`` (means ± sample std (ddof=1) over seeds and the settings used),
``results.png`` (metric vs shots per task, one line per model) and ``run.json`` (everything
needed to repeat the run), all written by `genemask_jax.report`.

``--max_test_examples=N`` scores a fixed random subset of N test rows (quick runs; Cohn-enh
has 6,948 test sequences of 497 tokens, the costly part on a CPU); the default scores all.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging

from genemask_jax import errors
from genemask_jax import fewshot_lib
from genemask_jax.finetune import hparam_flags

FewShotError = fewshot_lib.FewShotError  # Bad flags are the library's user errors.

flags.DEFINE_list("checkpoint", [],
                  "Model(s) to evaluate: PATH, or NAME=PATH,... to compare several. PATH is a "
                  "pretraining WORKDIR (latest step), WORKDIR/checkpoints/STEP or WORKDIR/STEP; "
                  "the word 'random' gives a randomly initialised model of --model_size; "
                  "hf:DIR a HuggingFace BERT directory (e.g. DNABERT-6's weights).")
flags.DEFINE_string("init_from_hf", None,
                    "A HuggingFace BERT directory to evaluate (added as model 'hf'; same as "
                    "--checkpoint=hf=hf:DIR).")
flags.DEFINE_enum("init", "pretrained", ["pretrained", "random"],
                  "pretrained: the --checkpoint models; random: one randomly initialised "
                  "model of --model_size (no-pretraining baseline).")
flags.DEFINE_string("model_size", None,
                    "Size for --init=random (default tiny); with --checkpoint, the size the "
                    "checkpoints must have.")
flags.DEFINE_list("tasks", ["prom_core", "prom_300", "cohn_enh", "splice_40"],
                  "Tasks: prom_core, prom_300, cohn_enh, splice_40.")
flags.DEFINE_list("shots", [], "N-shot settings; empty = every shot each task ships.")
flags.DEFINE_integer("seeds", 3, "Runs per (model, task, shot), seeds 0..N-1.")
flags.DEFINE_integer("seed_offset", 0, "First seed.")
flags.DEFINE_bool("resample", False,
                  "Each seed draws a new N-shot train set (same size per class) from the union "
                  "of the task's shipped train sets; the test set then excludes every "
                  "sequence of that union.")
flags.DEFINE_string("data_dir", None, "Directory holding fewshot/ (else $GENEMASK_DATA_DIR).")
flags.DEFINE_enum("mode", "finetune", list(fewshot_lib.MODES),
                  "finetune: train everything (Script-B); linear_probe: frozen encoder, "
                  "logistic regression on mean-pooled hidden states.")
flags.DEFINE_string("output_dir", None, "Where results.{csv,md,png} and run.json go.")
hparam_flags.define({
    "batch_size": "per shot", "learning_rate": "per shot", "epochs": "per shot",
    "warmup_frac": "0.1", "weight_decay": "0.01", "dropout": "0.1",
    "max_len": "k-mers + 2 of each task; shorter truncates"})
flags.DEFINE_integer("max_test_examples", None,
                     "Score a fixed random subset of this many test rows (default: all).")
flags.DEFINE_integer("seeds_in_parallel", 0,
                     "Seeds trained together in one vmapped step (0 = auto: one at a time "
                     "on CPU, where vmapping measured no gain; all on accelerators).")
flags.DEFINE_integer("eval_batch_size", 64, "Test rows per jitted forward pass.")
flags.DEFINE_list("plot_metrics", ["accuracy", "mcc"], "Metrics drawn in results.png.")
flags.DEFINE_bool("progress", True, "Progress bar per fine-tune on stderr.")


def parse_models(values: Sequence[str], init: str) -> tuple[tuple[str, str], ...]:
  """``["PATH"]`` or ``["a=PATH", "b=random"]`` -> ((name, source), ...)."""
  if init == "random":
    if values:
      raise FewShotError("--init=random takes no --checkpoint; to compare with a random "
                         "baseline use --checkpoint=mine=PATH,baseline=random")
    return (("random", "random"),)
  if not values:
    raise FewShotError("no model: pass --checkpoint=WORKDIR (or NAME=PATH,...) or "
                       "--init=random")
  out = []
  for v in values:
    name, sep, path = v.partition("=")
    if not sep:
      path = v
      name = "random" if v == "random" else (pathlib.Path(v).name or v)
      if name.isdigit():  # WORKDIR/checkpoints/STEP -> "WORKDIR@STEP".
        parts = pathlib.Path(v).parts
        base = parts[-3] if len(parts) >= 3 and parts[-2] == "checkpoints" else (
            parts[-2] if len(parts) >= 2 else "model")
        name = f"{base}@{name}"
    if not name or not path:
      raise FewShotError(f"--checkpoint entry {v!r}: expected PATH or NAME=PATH")
    out.append((name, path))
  names = [n for n, _ in out]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise FewShotError(f"--checkpoint names repeat: {dup}; name them NAME=PATH")
  return tuple(out)


def parse_shots(values: Sequence[str]) -> tuple[int, ...]:
  out = []
  for v in values:
    try:
      out.append(int(v))
    except ValueError as e:
      raise FewShotError(f"--shots: {v!r} is not an integer") from e
  return tuple(out)


def config_from_flags(fl: flags.FlagValues) -> fewshot_lib.RunConfig:
  """Reads the flags into a `RunConfig` (the only place flags are read)."""
  if not fl.output_dir:
    raise FewShotError("--output_dir is required")
  if fl.seeds < 1:
    raise FewShotError(f"--seeds must be >= 1, got {fl.seeds}")
  return fewshot_lib.RunConfig(
      models=parse_models(
          list(fl.checkpoint) + ([f"hf=hf:{fl.init_from_hf}"]
                                 if fl.init_from_hf else []), fl.init),
      model_size=fl.model_size,
      tasks=tuple(fl.tasks), shots=parse_shots(fl.shots),
      seeds=tuple(range(fl.seed_offset, fl.seed_offset + fl.seeds)), resample=fl.resample,
      data_dir=fl.data_dir, mode=fl.mode, output_dir=fl.output_dir, overrides=hparam_flags.overrides(fl),
      max_test_examples=fl.max_test_examples, seeds_in_parallel=fl.seeds_in_parallel,
      eval_batch_size=fl.eval_batch_size, plot_metrics=tuple(fl.plot_metrics),
      progress=fl.progress)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax/JAX info lines drown the progress.
  with errors.exits_on_user_error("fewshot"):
    rc = config_from_flags(flags.FLAGS)
    fewshot_lib.run(rc)
  print(f"wrote {os.path.join(rc.output_dir, 'results.csv')}, results.md, results.png, "
        "run.json")


if __name__ == "__main__":
  app.run(main)
