"""HuggingFace BERT interop: import DNABERT-style checkpoints, export ours for PyTorch users.

The package's parts, lowest first:

  - `hf.safetensors`: the ``.safetensors`` format in numpy (no torch).
  - `hf.mapping`: configs, vocabulary and the weight table between HF state dicts and our
    parameter trees; pure, no files.
  - `hf.files`: HF directories on disk (read, check, write).
  - `hf.cli`: ``python -m genemask_jax.hf import|export`` and the model card.

Placing imported params on a sharded train state is `genemask_jax.state`. The names most
callers need are re-exported here::

    from genemask_jax import hf
    ckpt = hf.load_hf_checkpoint("DNA_bert_6"); params = hf.mlm_params(ckpt)
    hf.export_params(params, ckpt.config, "out/")
"""

from genemask_jax.hf.errors import HFExportError
from genemask_jax.hf.errors import HFImportError
from genemask_jax.hf.files import CONFIG_NAME
from genemask_jax.hf.files import SAFETENSORS_INDEX_NAME
from genemask_jax.hf.files import SAFETENSORS_NAME
from genemask_jax.hf.files import TORCH_BIN_NAME
from genemask_jax.hf.files import VOCAB_NAME
from genemask_jax.hf.files import export_params
from genemask_jax.hf.files import load_hf_checkpoint
from genemask_jax.hf.files import load_hf_encoder
from genemask_jax.hf.files import load_hf_for_init
from genemask_jax.hf.files import read_hf_config
from genemask_jax.hf.files import read_state_dict
from genemask_jax.hf.mapping import HFCheckpoint
from genemask_jax.hf.mapping import checkpoint_from_state_dict
from genemask_jax.hf.mapping import classification_params
from genemask_jax.hf.mapping import config_differences
from genemask_jax.hf.mapping import hf_config_from_model_config
from genemask_jax.hf.mapping import mlm_params
from genemask_jax.hf.mapping import model_config_from_hf
from genemask_jax.hf.mapping import params_to_state_dict
from genemask_jax.hf.safetensors import read_safetensors
from genemask_jax.hf.safetensors import write_safetensors
