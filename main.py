r"""GeneMask pretraining: the main job.

    python main.py --config=configs/pretrain.py --workdir=workdir/default
    python main.py --config=configs/pretrain.py:paper --workdir=gs://bucket/run
    python main.py --config=configs/pretrain.py --config.masking.strategy=dnabert ...

Multi-process (see launch/): `--coordinator=HOST:PORT --num_processes=N --process_id=I`,
or nothing on a TPU pod / SLURM job step, where the environment says it all.
Restarting with the same --workdir resumes from its last intact checkpoint (a damaged
newest one is reported and moved to WORKDIR/checkpoints.damaged/, never deleted). A local
--workdir may be relative; it is made absolute once at start. One run at a time may use a
workdir (WORKDIR/.lock).

Exit status: 0 when the run reached config.train.num_steps; 2 for a user error (one line
on stderr, before any long work); 1 when the loss became NaN/inf; 143 (128 + SIGTERM, and
for a cluster's preemption notice) or 130 (SIGINT) when stopped early after saving a
checkpoint: rerun the same command to resume. So `python main.py ... && next` runs `next`
only after a finished run.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from genemask_jax import errors  # The user-error base class only; imports nothing heavy.

config_flags.DEFINE_config_file(
    "config", None, "Configuration file, e.g. configs/pretrain.py[:preset].", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the NPMI cache.")
flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (explicit multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-process).")
flags.DEFINE_integer("coordinator_timeout", 300, "Seconds to wait for the coordinator.")
flags.DEFINE_bool("multihost", False,
                  "Call jax.distributed.initialize() with cluster auto-detection (Cloud TPU "
                  "VM slices, SLURM, ...); launch/tpu_pod.sh passes it.")
flags.DEFINE_string("init_from_hf", None,
                    "A HuggingFace BERT directory to continue pretraining from.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv):
  """Parses flags, turning a bad config override into one clear line instead of a trace."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    msg = str(e)
    if "Traceback (most recent call last)" in msg:  # Raised by the config file: one line.
      head = msg.splitlines()[0].split(": Error whilst parsing")[0]
      last = [line for line in msg.splitlines() if line.strip()][-1]
      sys.stderr.write(f"{argv[0]}: {head}: {last.removeprefix('ValueError: ')}\n")
      sys.exit(2)
    sys.stderr.write(f"{argv[0]}: {msg}\nPass --helpfull to see the flags.\n")
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    sys.stderr.write(f"{argv[0]}: bad --config override: {msg}\n")
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines are printed; --verbosity=0 for more.
  from genemask_jax import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(flags.FLAGS.coordinator, flags.FLAGS.num_processes,
                           flags.FLAGS.process_id, flags.FLAGS.coordinator_timeout,
                           force_auto=flags.FLAGS.multihost)
  except distributed.DistributedError as e:
    sys.stderr.write(f"main.py: {e}\n")
    sys.exit(2)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from genemask_jax import train  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  print(distributed.banner(), flush=True)
  try:
    train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                             init_from_hf=flags.FLAGS.init_from_hf)
  except errors.UserError as e:
    sys.stderr.write(f"main.py: error: {e}\n")
    sys.exit(2)
  except train.NonFiniteLoss as e:
    sys.stderr.write(f"main.py: {e}\n")
    sys.exit(1)
  except train.Preempted as e:
    sys.stderr.write(f"main.py: {e}\n")
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
