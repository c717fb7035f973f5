"""TwinBench in JAX: ranking metrics, permutation nulls and the bias-corrected AUC-F1.

The array core (similarities, ranks, p-values, AUC-F1) is re-exported here;
see `SPEC.md` for the definition of every number. Import as
``import twinbench_jax as tb``.
"""

from twinbench_jax._src.core.auc import AucF1Result, auc_f1, candidate_auc_f1
from twinbench_jax._src.data.baselines import BASELINES, split_half
from twinbench_jax._src.evaluate.compare import Comparison, compare
from twinbench_jax._src.evaluate.evaluate import Report, evaluate
from twinbench_jax._src.training.losses import (
    QueryBatch,
    auc_f1_loss,
    hard_auc_f1_validation,
    make_auc_f1_metric_update,
    make_soft_auc_f1_loss,
    soft_auc_f1_loss,
)
from twinbench_jax._src.training.metrics import AucF1Metric
from twinbench_jax._src.nulls.engine import (
    OWN_SCORES,
    NullResult,
    label_null,
    model_null,
    precomputed_null,
)
from twinbench_jax._src.core.own_scores import cross_own_scores, own_scores
from twinbench_jax._src.nulls.arrays import ArrayEvaluation, evaluate_arrays
from twinbench_jax._src.data.profiles import NORMALIZATIONS, Pseudobulk, pseudobulk
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
from twinbench_jax._src.datasets.simulate import SimulatedData, simulate_perturbations
from twinbench_jax._src.soft.relaxation import (
    SoftTemperatures,
    soft_auc_f1,
    soft_called,
    soft_empirical_pvalues,
    soft_f1_curve,
    soft_hit_at_k,
    soft_truth_ranks,
)
from twinbench_jax._src.datasets.toy_task import ToyTask, make_toy_task, toy_mlp_init, toy_mlp_predict
from twinbench_jax._src.version import METRIC_VERSION, __version__


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
    "SimulatedData",
    "SoftTemperatures",
    "ToyTask",
    "approx_mrr_loss",
    "approx_truth_ranks",
    "auc_f1",
    "auc_f1_loss",
    "benjamini_hochberg",
    "candidate_auc_f1",
    "compare",
    "cross_own_scores",
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
    "make_toy_task",
    "model_null",
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
    "simulate_perturbations",
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
    "toy_mlp_init",
    "toy_mlp_predict",
    "truth_ranks",
]
