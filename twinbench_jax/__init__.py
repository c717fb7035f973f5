"""TwinBench in JAX: ranking metrics, permutation nulls and the bias-corrected AUC-F1.

The array core (similarities, ranks, p-values, AUC-F1), the nulls, the soft
relaxation and the training losses are re-exported here; see `SPEC.md` for the
definition of every number. Import as ``import twinbench_jax as tb``.

The AnnData world (`evaluate`, `Report`, `compare`, `pseudobulk`, the
baselines) is imported on first use, so ``import twinbench_jax`` loads neither
anndata nor pandas. The simulator and the toy task live in `tb.datasets`.
"""

import importlib as _importlib
import typing as _typing
import warnings as _warnings

from twinbench_jax import datasets
from twinbench_jax._src.core.auc import AucF1Result, auc_f1, candidate_auc_f1
from twinbench_jax._src.training.losses import (
    QueryBatch,
    auc_f1_loss,
    hard_auc_f1_validation,
    make_auc_f1_metric_update,
    make_soft_auc_f1_loss,
    soft_auc_f1_loss,
)
from twinbench_jax._src.training.metrics import AucF1Metric
from twinbench_jax._src.core.own_scores import OWN_SCORES
from twinbench_jax._src.nulls.label import label_null
from twinbench_jax._src.nulls.model import model_null
from twinbench_jax._src.nulls.query_sharding import query_mesh
from twinbench_jax._src.nulls.precomputed import precomputed_null
from twinbench_jax._src.nulls.result import NullResult
from twinbench_jax._src.core.own_scores import cross_own_scores, own_scores
from twinbench_jax._src.nulls.arrays import ArrayEvaluation, evaluate_arrays
from twinbench_jax._src.core.pvalues import (
    benjamini_hochberg,
    empirical_pvalues,
    exceedance_counts,
    fraction_called,
    label_permutation_pvalues,
    pvalues_from_counts,
)
from twinbench_jax._src.nulls.randomize import permute_rows, resolve_randomizer, shuffle_features
from twinbench_jax._src.core.ranking import (
    f1_at_k,
    gini,
    hit_at_k,
    normalized_rank,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    relevant_in_top_k,
    top1_counts,
    truth_ranks,
)
from twinbench_jax._src.training.ranking_losses import (
    approx_mrr_loss,
    approx_truth_ranks,
    pairwise_logistic_loss,
    soft_hit_loss,
    softmax_ce_loss,
)
from twinbench_jax._src.core.relevance import relevance_from_labels
from twinbench_jax._src.core.similarity import METRICS, similarity
from twinbench_jax._src.soft.area import soft_auc_f1, soft_f1_curve
from twinbench_jax._src.soft.pvalues import soft_called, soft_empirical_pvalues
from twinbench_jax._src.soft.ranks import soft_hit_at_k, soft_truth_ranks
from twinbench_jax._src.soft.temperatures import SoftTemperatures
from twinbench_jax._src.version import METRIC_VERSION, __version__

if _typing.TYPE_CHECKING:  # the lazy names below, for type checkers and IDEs
  from twinbench_jax._src.data.baselines import BASELINES, split_half
  from twinbench_jax._src.data.profiles import NORMALIZATIONS, Pseudobulk, pseudobulk
  from twinbench_jax._src.evaluate.compare import Comparison, compare
  from twinbench_jax._src.evaluate.evaluate import Report, evaluate

# Imported on first access: they pull in anndata, pandas and scipy.
_LAZY = {
    "BASELINES": "twinbench_jax._src.data.baselines",
    "split_half": "twinbench_jax._src.data.baselines",
    "NORMALIZATIONS": "twinbench_jax._src.data.profiles",
    "Pseudobulk": "twinbench_jax._src.data.profiles",
    "pseudobulk": "twinbench_jax._src.data.profiles",
    "Comparison": "twinbench_jax._src.evaluate.compare",
    "compare": "twinbench_jax._src.evaluate.compare",
    "Report": "twinbench_jax._src.evaluate.evaluate",
    "evaluate": "twinbench_jax._src.evaluate.evaluate",
}
# Top-level names of release 0.1 that moved to `tb.datasets`; kept for one release.
_MOVED_TO_DATASETS = ("SimulatedData", "ToyTask", "make_toy_task", "simulate_perturbations",
                      "toy_mlp_init", "toy_mlp_predict")


def __getattr__(name: str):
  if name in _LAZY:
    value = getattr(_importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later accesses skip this function
    return value
  if name in _MOVED_TO_DATASETS:
    _warnings.warn(f"`twinbench_jax.{name}` moved to `twinbench_jax.datasets.{name}`; the "
                   f"top-level alias will be removed in the next release",
                   DeprecationWarning, stacklevel=2)
    return getattr(datasets, name)
  raise AttributeError(f"module 'twinbench_jax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__) | set(_MOVED_TO_DATASETS))


__all__ = [
    "BASELINES",
    "METRICS",
    "METRIC_VERSION",
    "NORMALIZATIONS",
    "OWN_SCORES",
    "ArrayEvaluation",
    "AucF1Metric",
    "AucF1Result",
    "Comparison",
    "NullResult",
    "Pseudobulk",
    "QueryBatch",
    "Report",
    "SoftTemperatures",
    "approx_mrr_loss",
    "approx_truth_ranks",
    "auc_f1",
    "auc_f1_loss",
    "benjamini_hochberg",
    "candidate_auc_f1",
    "compare",
    "cross_own_scores",
    "datasets",
    "empirical_pvalues",
    "evaluate",
    "evaluate_arrays",
    "exceedance_counts",
    "f1_at_k",
    "fraction_called",
    "gini",
    "hard_auc_f1_validation",
    "hit_at_k",
    "label_null",
    "label_permutation_pvalues",
    "make_auc_f1_metric_update",
    "make_soft_auc_f1_loss",
    "model_null",
    "query_mesh",
    "normalized_rank",
    "own_scores",
    "pairwise_logistic_loss",
    "permute_rows",
    "precision_at_k",
    "precomputed_null",
    "pseudobulk",
    "pvalues_from_counts",
    "recall_at_k",
    "reciprocal_rank",
    "resolve_randomizer",
    "relevance_from_labels",
    "relevant_in_top_k",
    "shuffle_features",
    "similarity",
    "soft_auc_f1",
    "soft_auc_f1_loss",
    "soft_called",
    "soft_empirical_pvalues",
    "soft_f1_curve",
    "soft_hit_at_k",
    "soft_hit_loss",
    "soft_truth_ranks",
    "softmax_ce_loss",
    "split_half",
    "top1_counts",
    "truth_ranks",
]
