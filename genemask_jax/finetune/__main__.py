r"""Fine-tune and score a model on your own labelled data (DNABERT-2/GUE layout).

    python -m genemask_jax.finetune --data_dir=DIR --checkpoint=WORKDIR --seeds=3 \
        --output_dir=OUT [--task_type=classification|regression] [--save_model=MODEL_DIR]
    python -m genemask_jax.finetune --gue_dir=GUE --task=prom/prom_300_all \
        --checkpoint=hf:DNA_bert_6 --seeds=3 --output_dir=OUT
    python -m genemask_jax.finetune --data_dir=DIR --checkpoint=random --model_size=tiny \
        --output_dir=OUT                                       # no-pretraining baseline

``--data_dir`` holds ``train.csv``, ``dev.csv`` and ``test.csv`` with a ``sequence,label``
header (any number of classes; numeric targets with ``--task_type=regression``);
``--gue_dir`` + ``--task`` reads GUE's folder ``GUE/<group>/<task>`` the same way.

Each seed fine-tunes the whole model (batch 32, LR 3e-5, 10 epochs, AdamW wd 0.01, 10%
warm-up then linear decay, clip 1.0, dropout 0.1; every value has a flag) and scores dev
after every epoch. **dev is used for model selection**: the epoch with the best dev MCC
(regression: lowest dev MSE) is kept and scored once on test; **early stopping** ends a
seed after ``--patience`` epochs without a better dev score (0 = off). Inputs are
``[CLS] 6-mers [SEP]`` at the longest sequence's length, at most the model's 512
positions (or ``--max_len``). Longer sequences are split into overlapping windows: each
window trains as a row with its sequence's label, and dev/test score a sequence as the
mean of its windows' class probabilities (regression: values); ``--max_windows=N`` keeps
at most N evenly spaced windows per sequence (see `genemask_jax.finetune.own_task`).

Outputs in ``--output_dir``: ``results.csv`` (per seed: test and dev metrics; MCC, F1,
accuracy, precision, recall, ROC-AUC (macro one-vs-one for >2 classes), or Pearson,
Spearman, MSE), ``results.md`` (per seed and mean ± sample std) and ``run.json``.
``--save_model=DIR`` keeps the seed with the best dev score for
``python -m genemask_jax.predict --model=DIR``; ``--export_hf=DIR`` also writes it as a
HuggingFace ``BertForSequenceClassification``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging

from genemask_jax import errors
from genemask_jax.data import labelled
from genemask_jax.finetune import hparam_flags
from genemask_jax.finetune import own_task

flags.DEFINE_string("data_dir", None, "Dataset folder with train.csv, dev.csv, test.csv.")
flags.DEFINE_string("gue_dir", None, "GUE's root folder (use with --task).")
flags.DEFINE_string("task", None, "GUE task as GROUP/TASK, e.g. prom/prom_300_all.")
flags.DEFINE_string("checkpoint", None,
                    "Pretraining WORKDIR (latest step) or WORKDIR/checkpoints/STEP; hf:DIR "
                    "for a HuggingFace BERT; 'random' for a random init of --model_size.")
flags.DEFINE_string("model_size", None,
                    "Size for --checkpoint=random (default tiny); else the size required.")
flags.DEFINE_enum("task_type", "classification", list(labelled.TASK_TYPES),
                  "classification (labels are classes) or regression (numeric labels).")
flags.DEFINE_integer("seeds", 3, "Runs, seeds --seed_offset.. --seed_offset+N-1.")
flags.DEFINE_integer("seed_offset", 0, "First seed.")
flags.DEFINE_string("output_dir", None, "Where results.csv, results.md and run.json go.")
flags.DEFINE_string("save_model", None, "Save the best-dev seed's model here (a new dir).")
flags.DEFINE_string("export_hf", None,
                    "Also export the saved model as HF BertForSequenceClassification here.")
hparam_flags.define({
    "batch_size": "32", "learning_rate": "3e-5", "epochs": "10, at most",
    "warmup_frac": "0.1", "weight_decay": "0.01", "dropout": "0.1",
    "max_len": "the longest sequence's, at most the model's"})
flags.DEFINE_integer("max_windows", None, "At most this many (evenly spaced) windows per "
                     "sequence longer than the input; default all.")
flags.DEFINE_integer("patience", 3, "Stop a seed after this many epochs without a better "
                     "dev score (0 = train every epoch).")
flags.DEFINE_integer("eval_batch_size", 64, "Dev/test rows per jitted forward pass.")
flags.DEFINE_bool("progress", True, "Progress bar per seed on stderr.")


def config_from_flags(fl: flags.FlagValues) -> own_task.RunConfig:
  """Reads the flags into a `own_task.RunConfig` (the only place flags are read)."""
  if bool(fl.data_dir) == bool(fl.gue_dir):
    raise own_task.OwnTaskError("pass exactly one of --data_dir=DIR or --gue_dir=DIR "
                                "--task=GROUP/TASK")
  if fl.gue_dir:
    if not fl.task:
      raise own_task.OwnTaskError("--gue_dir needs --task=GROUP/TASK, e.g. "
                                  "prom/prom_300_all")
    dataset_dir, name = str(labelled.gue_task_dir(fl.gue_dir, fl.task)), fl.task
  else:
    if fl.task:
      raise own_task.OwnTaskError("--task goes with --gue_dir; with --data_dir the folder "
                                  "is the task")
    dataset_dir, name = fl.data_dir, None
  if not fl.checkpoint:
    raise own_task.OwnTaskError("--checkpoint is required: WORKDIR, hf:DIR or random")
  if not fl.output_dir:
    raise own_task.OwnTaskError("--output_dir is required")
  if fl.seeds < 1:
    raise own_task.OwnTaskError(f"--seeds must be >= 1, got {fl.seeds}")
  return own_task.RunConfig(
      dataset_dir=dataset_dir, task_name=name, checkpoint=fl.checkpoint,
      model_size=fl.model_size, task_type=fl.task_type,
      seeds=tuple(range(fl.seed_offset, fl.seed_offset + fl.seeds)),
      output_dir=fl.output_dir, overrides=hparam_flags.overrides(fl),
      max_windows=fl.max_windows, patience=fl.patience, save_model=fl.save_model, export_hf=fl.export_hf,
      eval_batch_size=fl.eval_batch_size, progress=fl.progress)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax/JAX info lines drown the progress.
  with errors.exits_on_user_error("finetune"):
    rc = config_from_flags(flags.FLAGS)
    own_task.run(rc)
  print(f"wrote {os.path.join(rc.output_dir, 'results.csv')}, results.md, run.json"
        + (f"; model in {rc.save_model}" if rc.save_model else ""))


if __name__ == "__main__":
  app.run(main)
