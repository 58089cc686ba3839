r"""The ``python -m genemask_jax.hf`` command: import an HF directory, export a checkpoint.

    python -m genemask_jax.hf import --hf_dir=DNA_bert_6 --output=ckpt/dnabert6
    python -m genemask_jax.hf export --checkpoint=workdir/run --output=hf/run \
        [--step=N] [--fewshot_results=results.md]

**Import** writes a workdir in the pretraining binary's layout (`genemask_jax.workdir`:
``config.json`` with ``model_signature`` and ``model_config``, and ``checkpoints/0`` =
``Composite(state=TrainState, data={})``), which the few-shot binary and ``--init_from``
accept. **Export** restores a pretraining checkpoint (a workdir, its ``checkpoints``
folder or one step's folder) and writes ``config.json`` (``BertConfig``),
``model.safetensors`` (the tied decoder left out, as ``save_pretrained`` does),
DNABERT's ``vocab.txt`` and a ``README.md`` model card, a directory that
``transformers.BertForMaskedLM.from_pretrained`` loads with no missing or unexpected keys.

**Export of a fine-tuned model**: when ``--checkpoint`` is a directory written by
``python -m genemask_jax.finetune --save_model=DIR`` (it holds ``model.json``), the export
is a ``BertForSequenceClassification`` directory instead (`finetune.saved.export_hf`:
``num_labels``, ``problem_type``, ``id2label`` from the training labels)::

    python -m genemask_jax.hf export --checkpoint=MODEL_DIR --output=HF_DIR
"""

from __future__ import annotations

import csv
import io
import pathlib
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from absl import logging

from genemask_jax import errors
from genemask_jax import model as model_lib
from genemask_jax import optim
from genemask_jax import resume
from genemask_jax import train_step
from genemask_jax import workdir as workdir_lib
from genemask_jax.finetune import saved
from genemask_jax.hf import files
from genemask_jax.hf import mapping
from genemask_jax.hf.errors import HFExportError
from genemask_jax.hf.errors import HFImportError

PathLike = files.PathLike


def restore_params(checkpoint: PathLike, step: int | None = None
                   ) -> tuple[model_lib.ModelConfig, dict[str, Any], dict[str, Any]]:
  """Restores the MLM params of a pretraining (or imported) checkpoint onto the host.

  Args:
    checkpoint: WORKDIR, WORKDIR/checkpoints[/STEP] or WORKDIR/STEP (as the few-shot
      binary's ``--init_from``).
    step: the step; None = the latest (or the one the path names).

  Returns:
    (ModelConfig, BertForMaskedLM params as float32 numpy, info) where info holds
    ``step``, ``workdir`` and ``run_config`` (the parsed ``config.json``).

  Raises:
    HFExportError: no checkpoint there, or params that do not fit the recorded config.
  """
  try:
    workdir, step_dir = workdir_lib.resolve_checkpoint(checkpoint, step)
    cfg, run_config = workdir_lib.read_model_config(workdir)
    params = workdir_lib.restore_params(step_dir, cfg,
                                        hint="export another step with --step=N")
  except workdir_lib.CheckpointError as e:
    raise HFExportError(str(e)) from e
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  return cfg, params, {"step": int(step_dir.name), "workdir": workdir,
                       "run_config": run_config}


def _results_markdown(path: pathlib.Path) -> str:
  text = path.read_text(encoding="utf-8")
  if path.suffix.lower() != ".csv":
    return text.strip()
  rows = list(csv.reader(io.StringIO(text)))
  rows = [r for r in rows if r]
  if not rows:
    return "(empty results file)"
  head, body = rows[0], rows[1:]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(r) + " |" for r in body]
  return "\n".join(lines)


def model_card(cfg: model_lib.ModelConfig, run_config: Mapping[str, Any], step: int, *,
               fewshot_results: PathLike | None = None, k: int = 6) -> str:
  """A short README.md for an exported model: masking, steps, data, shape, results."""
  conf = run_config.get("config", {}) or {}
  masking = conf.get("masking", {}) or {}
  data = conf.get("data", {}) or {}
  train = conf.get("train", {}) or {}
  source = run_config.get("source", {}) or {}
  strategy = masking.get("strategy") or ("not recorded (imported weights)"
                                          if source.get("hf_dir") else "not recorded")
  strategy_text = {
      "genemask": "GeneMask (NPMI-guided span masking: high-PMI k-mer spans are masked "
                  "preferentially)",
      "dnabert": "DNABERT span masking (contiguous k-mer spans)",
      "bert": "BERT random token masking",
  }.get(strategy, strategy)
  if source.get("hf_dir"):
    origin = f"Imported from the HuggingFace directory `{source['hf_dir']}`."
  else:
    fasta = data.get("fasta") or "the human-genome sample embedded in genemask-jax"
    origin = (f"Pretrained with genemask-jax on {fasta} (k={data.get('k', k)}, sequences of "
              f"up to {data.get('max_len', cfg.max_len)} tokens).")
  n_steps = train.get("num_steps")
  steps = f"{step}" + (f" of {n_steps} planned" if n_steps else "")
  lines = [
      "---", "library_name: transformers", "tags:", "- dna", "- genomics", "- bert",
      "- genemask", "---", "",
      f"# {run_config.get('model_signature', {}).get('size', 'custom')} DNA BERT "
      f"({k}-mer, genemask-jax)", "",
      origin, "",
      f"- Masking strategy: {strategy_text}"
      + (f", masking rate p={masking['p']}" if masking.get("p") is not None else "") + ".",
      f"- Optimizer steps: {steps}"
      + (f", global batch {train['batch_size']}" if train.get("batch_size") else "") + ".",
      f"- Shape: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, "
      f"MLP {cfg.mlp_dim}, {cfg.max_len} positions, vocabulary {cfg.vocab_size} "
      f"(DNABERT's {k}-mer vocab.txt).", "",
      "## Use", "", "```python",
      "from transformers import BertForMaskedLM, BertTokenizer",
      "model = BertForMaskedLM.from_pretrained(PATH)",
      "tokenizer = BertTokenizer.from_pretrained(PATH)  # input: space-separated "
      f"{k}-mers", "```", "",
  ]
  if fewshot_results is not None:
    lines += ["## Few-shot results", "", _results_markdown(pathlib.Path(fewshot_results)), ""]
  return "\n".join(lines)


def export_checkpoint(checkpoint: PathLike, output: PathLike, *, step: int | None = None,
                      fewshot_results: PathLike | None = None,
                      overwrite: bool = False) -> pathlib.Path:
  """Exports a pretraining checkpoint as a ``BertForMaskedLM`` HF directory (with card)."""
  output = pathlib.Path(output)
  if output.exists() and any(output.iterdir()) and not overwrite:
    raise HFExportError(f"{output}: exists and is not empty (pass overwrite=True / "
                        "--overwrite)")
  if fewshot_results is not None and not pathlib.Path(fewshot_results).is_file():
    raise HFExportError(f"{fewshot_results}: few-shot results file not found")
  cfg, params, info = restore_params(checkpoint, step)
  k = int(info["run_config"].get("config", {}).get("data", {}).get("k", 6))
  card = model_card(cfg, info["run_config"], info["step"], fewshot_results=fewshot_results,
                    k=k)
  return files.export_params({"bert": {n: v for n, v in params["bert"].items() if n != "pooler"},
                        "cls": params["cls"]}, cfg, output, k=k, model_card=card)


def _size_name(cfg: model_lib.ModelConfig) -> str:
  for name, fields in model_lib.MODEL_SIZES.items():
    shape = {f: v for f, v in fields.items() if f in model_lib.SIZE_FIELDS}
    if all(getattr(cfg, f) == v for f, v in shape.items()) and cfg.max_len == 512:
      return name
  return "custom"


def import_to_checkpoint(hf_dir: PathLike, output: PathLike, *, k: int = 6,
                         check_vocab: bool = True, overwrite: bool = False) -> pathlib.Path:
  """Writes an HF directory as a pretraining-style checkpoint dir (step 0).

  Layout: ``output/config.json`` = ``{"config", "model_signature", "model_config",
  "source"}`` and ``output/checkpoints/0`` = orbax ``Composite(state=TrainState(step=0,
  params=BertForMaskedLM params, opt_state=fresh AdamW state), data={})``.
  """
  output = pathlib.Path(output).absolute()
  if (output / "checkpoints").exists() and not overwrite:
    raise HFExportError(f"{output}: already holds checkpoints (pass overwrite=True / "
                        "--overwrite)")
  ckpt = files.load_hf_checkpoint(hf_dir, k=k, check_vocab=check_vocab)
  cfg = ckpt.config
  params = jax.tree.map(jnp.asarray, mapping.mlm_params(ckpt))
  tx = optim.make_optimizer(optim.make_lr_schedule(total_steps=1, warmup_steps=0))
  state = train_step.init_train_state(params, tx)
  size = _size_name(cfg)
  if overwrite and (output / workdir_lib.CHECKPOINT_DIR).exists():
    shutil.rmtree(output / workdir_lib.CHECKPOINT_DIR)
  output.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_config(
      output, cfg, size=size, full_model_config=True,
      config={"model": {"size": size, "dtype": cfg.dtype, "dropout_rate": cfg.dropout_rate},
              "data": {"k": k, "max_len": cfg.max_len}},
      source={"hf_dir": str(pathlib.Path(hf_dir).absolute()),
              "architectures": ckpt.architectures, "weights": ckpt.source.name,
              "mlm_head": "imported" if ckpt.has_mlm_head else "freshly initialised"})
  with resume.Checkpoints(output) as ckpts:
    ckpts.save(0, state, wait=True)
  return output


# ----------------------------------------------------------------------------- command
def define_flags() -> None:
  """The command's absl flags (defined by ``python -m genemask_jax.hf`` only)."""
  flags.DEFINE_string("hf_dir", None, "import: the HuggingFace model directory to read.")
  flags.DEFINE_string("checkpoint", None,
                      "export: a pretraining workdir, its checkpoints/ dir or a step dir; or "
                      "a fine-tuned model dir (--save_model, holds model.json).")
  flags.DEFINE_string("output", None, "import: checkpoint dir to write; export: HF dir.")
  flags.DEFINE_integer("step", None, "export: checkpoint step (default: the latest).")
  flags.DEFINE_string("fewshot_results", None,
                      "export: a few-shot results .csv or .md to put in the model card.")
  flags.DEFINE_integer("k", 6, "import: k-mer size of the tokenizer the model must use.")
  flags.DEFINE_bool("check_vocab", True, "import: compare vocab.txt with the tokenizer.")
  flags.DEFINE_bool("overwrite", False, "replace what --output already holds.")


_USAGE = ("usage: python -m genemask_jax.hf import --hf_dir=DIR --output=CKPT_DIR\n"
          "       python -m genemask_jax.hf export --checkpoint=CKPT_DIR --output=DIR "
          "[--step=N] [--fewshot_results=FILE]\n"
          "       python -m genemask_jax.hf export --checkpoint=MODEL_DIR --output=DIR  "
          "(a fine-tuned --save_model dir)")


def export_saved_model(model_dir: PathLike, output: PathLike, *,
                       overwrite: bool = False) -> pathlib.Path:
  """Exports a fine-tuned model dir (`finetune.saved`) as ``BertForSequenceClassification``.

  Raises:
    HFExportError: ``output`` holds files and ``overwrite`` is False.
    saved.SavedModelError: ``model_dir`` is not a readable saved model.
  """
  output = pathlib.Path(output)
  if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
    raise HFExportError(f"{output}: exists and is not an empty directory (pass "
                        "--overwrite)")
  return saved.export_hf(model_dir, output)


def is_saved_model(path: PathLike) -> bool:
  """Whether ``path`` is a fine-tuned model dir (holds ``model.json``) rather than a
  pretraining checkpoint."""
  return (pathlib.Path(path) / saved.MODEL_FILE).is_file()


def main(argv: Sequence[str]) -> int:
  """absl main: ``import`` or ``export`` (see module docstring)."""
  logging.set_verbosity(logging.ERROR)  # Orbax logs every file it opens.
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ("import", "export"):
    print(_USAGE, file=sys.stderr)
    return 2
  try:
    if argv[1] == "import":
      if not f.hf_dir or not f.output:
        raise HFImportError("import needs --hf_dir and --output\n" + _USAGE)
      out = import_to_checkpoint(f.hf_dir, f.output, k=f.k, check_vocab=f.check_vocab,
                                 overwrite=f.overwrite)
      print(f"wrote checkpoint {out} (step 0) from {f.hf_dir}")
    else:
      if not f.checkpoint or not f.output:
        raise HFExportError("export needs --checkpoint and --output\n" + _USAGE)
      if is_saved_model(f.checkpoint):
        if f.step is not None or f.fewshot_results:
          raise HFExportError(f"--checkpoint={f.checkpoint} is a fine-tuned model (it holds "
                              f"{saved.MODEL_FILE}); --step and --fewshot_results apply to "
                              "pretraining checkpoints only")
        out = export_saved_model(f.checkpoint, f.output, overwrite=f.overwrite)
        print(f"wrote HuggingFace BertForSequenceClassification directory {out}")
      else:
        out = export_checkpoint(f.checkpoint, f.output, step=f.step,
                                fewshot_results=f.fewshot_results, overwrite=f.overwrite)
        print(f"wrote HuggingFace BertForMaskedLM directory {out}")
  except errors.UserError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # One line.
    return 2  # A user error, as in every other binary.
  return 0
