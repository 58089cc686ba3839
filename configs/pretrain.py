r"""Pretraining configuration with presets.

    python main.py --config=configs/pretrain.py --workdir=workdir/default         # CPU demo
    python main.py --config=configs/pretrain.py:logo --workdir=...                 # LOGO size
    python main.py --config=configs/pretrain.py:dnabert_base --workdir=...         # BERT-base
    python main.py --config=configs/pretrain.py:paper --workdir=gs://bucket/run    # Script-A
    python main.py --config=configs/pretrain.py:test --workdir=/tmp/t              # tests

Any field can be overridden: `--config.train.batch_size=8`, `--config.masking.strategy=dnabert`.
A misspelt key fails at once and names the closest existing key.

Presets may be combined with commas, later ones winning: `:paper,dnabert` is the paper's
schedule with DNABERT's span masking (the baseline of the paper's comparison). Each preset
is an entry of `PRESETS`, a dict of overrides of `_base()`'s keys; add one there.
"""

from typing import Any

import ml_collections
from ml_collections import config_dict

from genemask_jax import sharding


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: a named size from genemask_jax.model.MODEL_SIZES.
  c.model = ml_collections.ConfigDict()
  c.model.size = "tiny"
  # Activations: "auto" = bfloat16 on GPU/TPU, float32 on CPU; parameters and optimizer
  # state stay float32. "float32" / "bfloat16" force one.
  c.model.dtype = "auto"
  c.model.dropout_rate = config_dict.placeholder(float)  # None: the size's default.
  # Pad the 4101-row vocabulary to a multiple of this so "vocab" can be split over a
  # model axis > 1 (4101 is odd); padded rows are never produced and are sliced off.
  c.model.vocab_pad_multiple = 1
  # "auto": blockwise attention on CPU; the Pallas kernel (hashed dropout) on TPU; on a GPU
  # cuDNN flash attention when attention dropout is 0 (and the dtype is bfloat16), else
  # blockwise; or one of "blockwise"|"xla"|"cudnn"|"pallas_gpu"|"pallas_tpu".
  c.model.attention_impl = "auto"
  # Recompute each encoder layer's activations in the backward pass: "none" | "full" |
  # "dots" (keep the weight-matmul outputs). Trades compute for memory; same numbers.
  c.model.remat = "none"
  # Apply the encoder layers as one lax.scan (one layer compiled, not num_layers copies);
  # same parameters and numbers, faster compiles; pair it with remat="dots" (memory).
  c.model.scan_layers = False

  # Corpus: FASTA files (empty = the human-genome sample embedded in the package), chunked
  # as the paper's data preparation did, built into a TFDS array_record dataset.
  c.data = ml_collections.ConfigDict()
  c.data.fasta = ""  # Comma-separated FASTA paths (plain or gzip); "" = embedded sample.
  c.data.tfds_dir = ""  # "" = WORKDIR/tfds.
  c.data.num_workers = 0  # Processes building the corpus; 0 = all cores (1 if small).
  c.data.k = 6
  c.data.max_len = 512  # Tokens per example including [CLS] and [SEP].
  c.data.long_chunk_prob = 0.5  # P(chunk has the full max_len + k - 3 bases).
  c.data.min_chunk_bp = 6
  c.data.join_across_n = False  # True: delete N and glue pieces (the authors' behaviour).
  c.data.validation_fraction = 0.1
  c.data.worker_count = 0  # grain worker processes.
  c.data.shuffle_seed = 0

  # Masking inside the jit'd step: genemask | dnabert | bert.
  c.masking = ml_collections.ConfigDict()
  c.masking.strategy = "genemask"
  c.masking.p = config_dict.placeholder(float)  # None: 0.0176 / 0.025 / 0.15 by strategy.
  c.masking.rank_source = "content"  # "position" reproduces the authors' released code.
  # The released code's defaultdict(int) table: special ids rank 0 (best); with "position"
  # positions 1-4 win their windows. The ":position" preset turns it on (authors' HEAD).
  c.masking.specials_rank_zero = False
  c.masking.random_over = "kmers"  # "vocab" reproduces the released code.
  c.masking.all_high_if_few = True
  # Fixed-size MLM targets per sequence (BERT's layout). GeneMask masks ~15% on average
  # with a long tail, so L/4 slots (docs/benchmarks.md, "Design measurements"); overflow
  # keeps a uniform random subset, counted in num_masked.
  c.masking.max_predictions = 128

  # NPMI lookup the masking reads: "corpus" computes it from the training FASTA (cached in
  # the workdir); otherwise a path to a table (ours or the authors' CSV, or .npz).
  c.npmi = ml_collections.ConfigDict()
  c.npmi.source = "corpus"
  c.npmi.min_count = 101
  # GeneMask refuses a table scoring fewer than this share of the 4^k k-mers (near-random
  # masking otherwise); 0 = accept any table.
  c.npmi.min_scored_fraction = 0.5

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16  # Global sequences per optimizer step.
  c.train.grad_accum_steps = 1  # Micro-batches per optimizer step.
  c.train.num_steps = 800
  c.train.log_every = 20
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.async_checkpoint = True

  c.optim = ml_collections.ConfigDict()
  c.optim.peak_lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-6
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 200
  c.eval.num_examples = 64  # Fixed held-out examples with fixed masks.
  c.eval.batch_size = 16

  # In-training few-shot probe (linear probe on frozen features); 0 = off.
  c.probe = ml_collections.ConfigDict()
  c.probe.every = 0
  c.probe.tasks = "prom_core"
  c.probe.shots = "10,100"
  c.probe.data_dir = ""  # "" = GENEMASK_DATA_DIR.
  c.probe.max_test_examples = 1000  # A fixed subset of each test set, for speed.

  # Device mesh: sizes may be -1 ("the rest of the devices").
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)
  c.mesh.axes = ("data", "model")
  # Logical axis -> mesh axis (None = replicated), as MaxText/T5X rules tables:
  # batch->data, heads/mlp/vocab->model, the rest replicated. sharding.FSDP_RULES adds an
  # "fsdp" axis (set mesh.axes = ("data", "fsdp", "model") with it).
  c.mesh.rules = sharding.DEFAULT_RULES
  return c


# Each preset is a dict of overrides ("section.key": value), applied in order of the
# `:preset[,preset]` argument; the names here are the only list of presets.
PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo on the embedded sample: short sequences so it finishes in minutes.
    "default": {"data.max_len": 128, "masking.max_predictions": 32},
    "test": {
        "model.size": "tiny", "data.max_len": 64, "masking.max_predictions": 16,
        "train.batch_size": 8, "train.num_steps": 6, "train.log_every": 1,
        "train.checkpoint_every": 3, "train.async_checkpoint": False,
        "optim.warmup_steps": 2,
        "eval.every": 3, "eval.num_examples": 16, "eval.batch_size": 8,
    },
    "logo": {"model.size": "logo", "data.max_len": 128, "masking.max_predictions": 32},
    "dnabert_base": {"model.size": "dnabert_base", "train.batch_size": 32},
    # The authors' Script-A: DNABERT base, 10k steps x 250 sequences, block 512.
    "paper": {
        "model.size": "dnabert_base", "data.max_len": 512, "masking.max_predictions": 128,
        "train.batch_size": 250, "train.num_steps": 10_000, "train.log_every": 50,
        "train.checkpoint_every": 1000,
        "optim.peak_lr": 8e-4, "optim.warmup_steps": 500,
        "eval.every": 1000, "eval.num_examples": 1000, "eval.batch_size": 50,
    },
    "large": {"model.size": "large", "train.batch_size": 256},
    # The masking strategy alone: `:paper,dnabert` is the paper's baseline.
    **{s: {"masking.strategy": s} for s in ("genemask", "dnabert", "bert")},
    # The authors' released code (HEAD): position ranks, special ids rank 0, any vocab id.
    "position": {"masking.rank_source": "position", "masking.specials_rank_zero": True,
                 "masking.random_over": "vocab"},
    # The authors' published table, from GENEMASK_DATA_DIR.
    "authors_npmi": {"npmi.source": "authors"},
}


def _apply(c: ml_collections.ConfigDict, preset: str) -> None:
  overrides = PRESETS.get(preset or "default")
  if overrides is None:
    raise ValueError(f"configs/pretrain.py: unknown preset {preset!r}; known: "
                     f"{', '.join(PRESETS)}")
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config for `arg`: comma-separated presets, applied left to right."""
  c = _base()
  for preset in (arg or "default").split(","):
    _apply(c, preset.strip())
  c.preset = arg or "default"
  return c
