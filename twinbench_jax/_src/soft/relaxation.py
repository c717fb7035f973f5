"""The soft relaxation's public functions, gathered from the modules of `soft/`.

`temperatures` (one temperature per step and their units), `ranks` (soft rank
and hit), `pvalues` (soft p-values and calls) and `area` (soft F1 curve and
AUC-F1). ``docs/soft_relaxation.md`` describes the relaxation.
"""

from __future__ import annotations

from twinbench_jax._src.soft.area import DEFAULT_ALPHA_CHUNK, soft_auc_f1, soft_f1_curve
from twinbench_jax._src.soft.pvalues import soft_called, soft_empirical_pvalues
from twinbench_jax._src.soft.ranks import RANK_SUPPORT, soft_hit_at_k, soft_truth_ranks
from twinbench_jax._src.soft.temperatures import (
    DEFAULT_TEMPERATURE,
    SoftTemperatures,
    Temperature,
    own_score_spread,
    resolve_temperatures,
    score_spread,
)

__all__ = [
    "DEFAULT_ALPHA_CHUNK", "DEFAULT_TEMPERATURE", "RANK_SUPPORT", "SoftTemperatures",
    "Temperature", "own_score_spread", "resolve_temperatures", "score_spread", "soft_auc_f1",
    "soft_called", "soft_empirical_pvalues", "soft_f1_curve", "soft_hit_at_k",
    "soft_truth_ranks",
]
