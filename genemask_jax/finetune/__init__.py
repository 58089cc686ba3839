"""Fine-tuning, linear probes and their metrics: the library under the evaluation binaries.

Modules:
  metrics: classification (accuracy, macro F1/precision/recall, MCC, ROC-AUC) and
    regression (Pearson, Spearman, MSE) metrics in plain numpy.
  classifier: Script-B full fine-tuning of a `BertForSequenceClassification`
    (`Hparams`, `finetune`, the jitted train and predict steps).
  probe: frozen-encoder features, logistic regression, the in-training probe.
  arrays: fixed-size row batching and subsampling shared by the others.
  own_task: fine-tuning on a user's GUE-layout dataset with dev model selection and
    early stopping; ``python -m genemask_jax.finetune`` (``__main__``) is its command.
  saved: a fine-tuned model on disk (save, load, predict, HuggingFace export).

The names most callers use are re-exported here, so ``from genemask_jax import finetune;
finetune.finetune(...)``, ``finetune.classification_metrics(...)`` and
``finetune.make_in_training_probe(...)`` work without naming the module.
"""

from genemask_jax.finetune.arrays import batched
from genemask_jax.finetune.arrays import subsample
from genemask_jax.finetune.classifier import classifier_config
from genemask_jax.finetune.classifier import finetune
from genemask_jax.finetune.classifier import FinetuneResult
from genemask_jax.finetune.classifier import Hparams
from genemask_jax.finetune.classifier import init_classifier_params
from genemask_jax.finetune.classifier import make_predict_fn
from genemask_jax.finetune.classifier import make_train_step
from genemask_jax.finetune.classifier import NonFiniteError
from genemask_jax.finetune.classifier import num_train_steps
from genemask_jax.finetune.classifier import resolve_hparams
from genemask_jax.finetune.classifier import script_b_hparams
from genemask_jax.finetune.classifier import stack_trees
from genemask_jax.finetune.metrics import classification_metrics
from genemask_jax.finetune.metrics import METRICS
from genemask_jax.finetune.metrics import regression_metrics
from genemask_jax.finetune.metrics import REGRESSION_METRICS
from genemask_jax.finetune.probe import encoder_encode_fn
from genemask_jax.finetune.probe import extract_features
from genemask_jax.finetune.probe import fit_logistic_regression
from genemask_jax.finetune.probe import linear_probe
from genemask_jax.finetune.probe import LogisticRegression
from genemask_jax.finetune.probe import make_feature_fn
from genemask_jax.finetune.probe import make_in_training_probe
from genemask_jax.finetune.probe import mlm_encode_fn
from genemask_jax.finetune.probe import probe_tasks_from_data
from genemask_jax.finetune.probe import ProbeTask
