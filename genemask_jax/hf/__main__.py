"""``python -m genemask_jax.hf import|export ...``: see `genemask_jax.hf.cli`."""

import sys

from absl import app

from genemask_jax.hf import cli

if __name__ == "__main__":
  cli.define_flags()
  app.run(lambda argv: sys.exit(cli.main(argv)))
