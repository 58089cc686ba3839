r"""Wall time of few-shot fine-tuning with the `tiny` model on this machine.

    python benchmarks/bench_fewshot.py --data_dir=/path/to/data              # one 10-shot run
    python benchmarks/bench_fewshot.py --seeds=3 --compare_vmap               # + vmap vs loop
    python benchmarks/bench_fewshot.py --motif_test       # + the motif test's fine-tune
    python benchmarks/bench_fewshot.py --grid --seeds=3 --max_test_examples=500 \
        --grid_log=docs/fewshot_grid.txt                                      # default grid

Prints, for one Script-B 10-shot Prom-core fine-tune (20 epochs, batch 5, 80 steps):
train time (compilation included) and test-set time; with ``--compare_vmap`` the same
``--seeds`` trained together in one vmapped step and one after another, side by side;
with ``--grid`` the whole default grid (4 tasks x every shipped shot x ``--seeds``) through
`genemask_jax.fewshot_lib.run`, i.e. what the binary does. A random-init tiny model
costs the same as a pretrained one. What was run is printed with every figure. ``--grid_log`` also
writes the printed figures with the command, date, load and versions to a file, which
``run_all.py`` copies into docs/benchmarks.md (the grid takes too long to rerun there).
"""

import datetime
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

# --data_dir, --seeds, --max_test_examples, --model_size: the binary's own flags.
from genemask_jax import fewshot  # pylint: disable=g-import-not-at-top,wrong-import-position,unused-import
from genemask_jax import fewshot_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
_VMAP = flags.DEFINE_bool("compare_vmap", False, "Also time seeds one at a time.")
_GRID = flags.DEFINE_bool("grid", False, "Also time the whole default grid.")
_GRID_LOG = flags.DEFINE_string("grid_log", "", "Write the figures + provenance here.")
_MOTIF = flags.DEFINE_bool("motif_test", False,
                           "Also time the fine-tune of tests/test_fewshot.py's motif test.")


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], text=True, check=True,
                          capture_output=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from genemask_jax import finetune  # pylint: disable=g-import-not-at-top
  from genemask_jax.finetune import classifier  # pylint: disable=g-import-not-at-top
  from genemask_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from genemask_jax.data import tasks  # pylint: disable=g-import-not-at-top

  lines = []
  started = datetime.datetime.now(datetime.timezone.utc)
  load0 = os.getloadavg()[0]

  def say(text):
    print(text, flush=True)
    lines.append(text)

  data_dir = tasks.resolve_data_dir(FLAGS.data_dir)
  say(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores; "
        f"model {(FLAGS.model_size or 'tiny')}, random init")
  data = tasks.load_task("prom_core", 10, data_dir)
  spec = data.task
  train = tasks.encode_examples(data.train, spec.max_len)
  test = finetune.subsample(tasks.encode_examples(data.test, spec.max_len), FLAGS.max_test_examples)
  cfg = model_lib.model_config((FLAGS.model_size or 'tiny'))
  hp = finetune.resolve_hparams(10, spec.max_len)
  seeds = list(range(FLAGS.seeds))

  def one(parallel):
    classifier.compiled_functions.cache_clear()
    t0 = time.time()
    res = finetune.finetune(cfg, None, train, test, spec.num_classes, hp, seeds,
                            seeds_in_parallel=parallel, progress=False)
    return time.time() - t0, res

  wall, res = one(len(seeds))
  say(f"prom_core 10-shot Script-B ({res.steps} steps, batch {hp.batch_size}, "
        f"{len(train[0])} train rows, {len(test[0])} test rows, {len(seeds)} seed(s) "
        f"vmapped): total {wall:.1f}s = train {res.train_seconds:.1f}s (incl. compile) + "
        f"test {res.eval_seconds:.1f}s; accuracy "
        f"{[round(m['accuracy'], 4) for m in res.metrics]}")
  if _VMAP.value and len(seeds) > 1:
    wall1, res1 = one(1)
    say(f"  same {len(seeds)} seeds one after another: total {wall1:.1f}s = train "
          f"{res1.train_seconds:.1f}s + test {res1.eval_seconds:.1f}s "
          f"(vmapped/loop = {wall / wall1:.2f})")
  if _MOTIF.value:
    # test_finetune_learns_a_motif_for_every_seed's run (it asserted < 60 s until #21).
    import numpy as np  # pylint: disable=g-import-not-at-top
    from genemask_jax import tokenizer  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)

    def motif_data(n, motif="GATTACA", length=40):
      seqs, labels = [], []
      while len(seqs) < n:
        s = "".join(rng.choice(list("ACGT"), length))
        if motif in s:
          continue
        if len(seqs) % 2:
          p = int(rng.integers(0, length - len(motif) + 1))
          s = s[:p] + motif + s[p + len(motif):]
        seqs.append(s)
        labels.append(len(seqs) % 2 == 0)
      return (tokenizer.pack([tokenizer.encode(s) for s in seqs], length - 3),
              np.array(labels, np.int32))

    mtrain, mtest = motif_data(200), motif_data(200)
    mcfg = model_lib.model_config("tiny", num_layers=1, hidden_size=64, num_heads=4,
                                  mlp_dim=128)
    mhp = finetune.Hparams(batch_size=20, learning_rate=2e-3, epochs=12, max_len=37,
                           dropout=0.0)
    t0 = time.time()
    mres = finetune.finetune(mcfg, None, mtrain, mtest, 2, mhp, [0, 1], progress=False)
    say(f"motif test fine-tune (1-layer width-64 model, 200 rows, 12 epochs, 2 seeds): "
        f"{time.time() - t0:.1f}s incl. compile; accuracy "
        f"{[round(m['accuracy'], 3) for m in mres.metrics]}")
  if _GRID.value:
    classifier.compiled_functions.cache_clear()
    with tempfile.TemporaryDirectory() as out:
      rc = fewshot_lib.RunConfig(
          models=(("random", "random"),), model_size=(FLAGS.model_size or 'tiny'), tasks=tuple(tasks.TASKS),
          shots=(), seeds=tuple(seeds), resample=False, data_dir=str(data_dir),
          mode="finetune", output_dir=out, overrides={},
          max_test_examples=FLAGS.max_test_examples, progress=sys.stderr.isatty())
      t0 = time.time()
      fewshot_lib.run(rc)
      grid = time.time() - t0
    runs = sum(len(s.shots) for s in tasks.TASKS.values())
    say(f"default grid: 4 tasks x every shipped shot ({runs} (task, shot) runs) x "
          f"{len(seeds)} seed(s), test rows {FLAGS.max_test_examples or 'all'}: {grid:.0f}s "
          f"({grid / 60:.1f} min)")
  if _GRID_LOG.value:
    head = [f"command: python benchmarks/bench_fewshot.py {' '.join(sys.argv[1:])}",
            f"started {started:%Y-%m-%d %H:%M} UTC, git commit {_commit()}, "
            f"{os.cpu_count()} CPU cores, 1-min load average {load0:.2f} before / "
            f"{os.getloadavg()[0]:.2f} after"]
    with open(_GRID_LOG.value, "w", encoding="utf-8") as f:
      f.write("\n".join(head + lines) + "\n")


if __name__ == "__main__":
  app.run(main)
