"""`tb.evaluate`'s options, checked once (`build`) into frozen groups (`Settings`).

The Python call and the CLI build them the same way; `Settings.report_settings`
writes the report's ``summary["settings"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from twinbench_jax._src.core import checks as core_checks
from twinbench_jax._src.data import baselines as baselines_lib
from twinbench_jax._src.data import profiles as profiles_lib
from twinbench_jax._src.evaluate import checks
from twinbench_jax._src.evaluate import target_genes as targets_lib


@dataclasses.dataclass(frozen=True)
class LabelSettings:
  """Where the perturbation labels are and which of them are ranked.

  Attributes:
    perturbation_key: `obs` column of the labels; None: from
      `adata_real.uns['perturbation_key']`, else ``"perturbation"``.
    pred_perturbation_key: the column in `adata_pred`; None: the same.
    control: the control label; None: from `uns['control_label']`, else
      ``"control"``; False: no control cells.
    include_control: rank the control like a perturbation.
    unmatched: perturbations on one side only (`profiles.UNMATCHED`).
  """

  perturbation_key: Optional[str] = None
  pred_perturbation_key: Optional[str] = None
  control: Any = None
  include_control: bool = False
  unmatched: str = "error"


@dataclasses.dataclass(frozen=True)
class ExpressionSettings:
  """How expression is read and compared: layers, normalisation, delta.

  Attributes:
    layer: layer of `adata_real` (None: `X`).
    pred_layer: layer of `adata_pred` (None: `X`), resolved from `layer`.
    normalize: per-cell normalisation of `adata_real` (None: none).
    pred_normalize: that of `adata_pred`, resolved from `normalize`.
    pred_normalize_option: the option that set `pred_normalize` (named in notes).
    delta: None, ``"control"``, ``"pred_control"`` or ``"mean"``.
    chunk_size: cells read at a time from every file (None: about 4 million
      entries).
  """

  layer: Optional[str] = None
  pred_layer: Optional[str] = None
  normalize: Optional[str] = None
  pred_normalize: Optional[str] = None
  pred_normalize_option: str = "normalize"
  delta: Optional[str] = None
  chunk_size: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class GeneSettings:
  """Which genes the profiles are compared on.

  Attributes:
    genes: the given genes (names as str), or None.
    n_top_genes: the number of most variable genes, or None.
    strict_genes: error when the files' gene sets differ.
    target_genes: the checked target-gene spec (`target_genes.check_target_genes`):
      None, an `obs` column name, or a mapping label -> tuple of gene names.
  """

  genes: Optional[tuple[str, ...]] = None
  n_top_genes: Optional[int] = None
  strict_genes: bool = False
  target_genes: Any = None

  def describe(self) -> str:
    """How the report's settings record the gene selection."""
    if self.genes is not None:
      return "given"
    return f"top {self.n_top_genes} variable" if self.n_top_genes is not None else "all shared"


@dataclasses.dataclass(frozen=True)
class NullSettings:
  """The null of the query p-values (SPEC §3) and the seeds.

  Attributes:
    kind: ``"label"``, ``"model"`` or ``"precomputed"``.
    null: the `null` option as given (the precomputed null predictions).
    n_null: replicates of a sampled null (None: its default).
    predict_fn: the model of a model null.
    inputs: its inputs (a pytree).
    randomize: the model null's randomiser.
    replicate_key: `obs` column that splits a null file into replicates.
    key: PRNG key of the model null and the split halves, or None.
    seed: used when `key` is None.
  """

  kind: str = "label"
  null: Any = dataclasses.field(default="label", compare=False)
  n_null: Optional[int] = None
  predict_fn: Optional[Callable] = dataclasses.field(default=None, compare=False)
  inputs: Any = dataclasses.field(default=None, compare=False)
  randomize: Any = "shuffle_features"
  replicate_key: str = "null_replicate"
  key: Optional[jax.Array] = dataclasses.field(default=None, compare=False)
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class ScoringSettings:
  """How the profiles are scored: similarity, ranks, baselines, report views.

  Attributes:
    metric: the similarity (`similarity.METRICS`).
    k: a query is correct when its truth ranks within the top `k`.
    ties: the tie rule of the ranks.
    direction: ``"pred_to_real"`` or ``"real_to_pred"`` (SPEC §2).
    candidate_level: also report the candidate-level AUC-F1.
    baselines: the calibration baselines to score (SPEC §6).
  """

  metric: str = "sqeuclidean"
  k: int = 1
  ties: str = "average"
  direction: str = "pred_to_real"
  candidate_level: bool = False
  baselines: tuple[str, ...] = baselines_lib.BASELINES


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every option of one evaluation, checked (`build`), in five groups.

  Attributes:
    labels, expression, genes, null, scoring: the groups.
    name: what to call the predictions in the report.
    progress: show progress bars (on a terminal only).
  """

  labels: LabelSettings = LabelSettings()
  expression: ExpressionSettings = ExpressionSettings()
  genes: GeneSettings = GeneSettings()
  null: NullSettings = NullSettings()
  scoring: ScoringSettings = ScoringSettings()
  name: str = "model"
  progress: bool = True

  def report_settings(self, *, perturbation_key: str, pred_perturbation_key: str,
                      control: Optional[str], pred: str, real: str) -> dict[str, Any]:
    """``summary["settings"]``: these settings with the keys and control read from the data.

    Args:
      perturbation_key, pred_perturbation_key, control: as resolved from the
        files (`uns` defaults applied).
      pred, real: the names of the two files or objects.
    """
    e, g = self.expression, self.genes
    return {
        "perturbation_key": perturbation_key, "pred_perturbation_key": pred_perturbation_key,
        "control": control, "include_control": self.labels.include_control,
        "layer": e.layer, "pred_layer": e.pred_layer, "normalize": e.normalize,
        "pred_normalize": e.pred_normalize, "genes": g.describe(),
        "target_genes": targets_lib.describe_target_spec(g.target_genes),
        "delta": e.delta, "unmatched": self.labels.unmatched, "metric": self.scoring.metric,
        "ties": self.scoring.ties, "seed": self.null.seed, "pred": pred, "real": real,
        "name": self.name, "direction": self.scoring.direction,
    }


def build(options: Mapping[str, Any]) -> Settings:
  """The checked `Settings` of the keyword options of `tb.evaluate`.

  Checked before any data is read, in the order of `tb.evaluate`'s signature;
  an invalid option raises naming it.

  Args:
    options: every keyword option of `tb.evaluate`, by name (its defaults:
      `evaluate.default_options()`).

  Raises:
    ValueError, TypeError: an invalid option.
  """
  o = options
  scoring = _scoring(o["metric"], o["ties"], o["k"])
  seed = baselines_lib.check_seed(o["seed"])
  expression = _expression(o["layer"], o["pred_layer"], o["normalize"], o["pred_normalize"],
                           o["delta"], o["chunk_size"])
  wanted = baselines_lib.check_baselines(o["baselines"])
  kind = checks.check_null(o["null"], o["n_null"], o["predict_fn"])
  genes = _genes(o["genes"], o["n_top_genes"], o["strict_genes"])
  if o["unmatched"] not in profiles_lib.UNMATCHED:
    raise ValueError(f"unknown `unmatched` {o['unmatched']!r}; choose one of "
                     f"{profiles_lib.UNMATCHED}")
  genes = dataclasses.replace(genes, target_genes=targets_lib.check_target_genes(
      o["target_genes"]))
  scoring = dataclasses.replace(
      scoring, direction=checks.check_direction(o["direction"]), baselines=wanted,
      candidate_level=checks.check_candidate_level(o["candidate_level"], kind,
                                                   genes.target_genes))
  return Settings(
      labels=LabelSettings(o["perturbation_key"], o["pred_perturbation_key"], o["control"],
                           o["include_control"], o["unmatched"]),
      expression=expression, genes=genes,
      null=NullSettings(kind, o["null"], o["n_null"], o["predict_fn"], o["inputs"],
                        o["randomize"], o["null_replicate_key"], o["key"], seed),
      scoring=scoring, name=str(o["name"]), progress=o["progress"])


def _scoring(metric: Any, ties: Any, k: Any) -> ScoringSettings:
  """The metric, tie rule and `k`, checked (the rest of the scoring options come later)."""
  return ScoringSettings(metric=core_checks.check_metric(metric),
                         ties=core_checks.check_ties(ties),
                         k=core_checks.check_k(k, integer=True))


def _expression(layer, pred_layer, normalize, pred_normalize, delta, chunk_size
                ) -> ExpressionSettings:
  """Layers and normalisations resolved for both files, and the checked delta."""
  norm_real = profiles_lib.check_normalize(normalize)
  norm_pred = (norm_real if pred_normalize is None
               else profiles_lib.check_normalize(pred_normalize, "pred_normalize"))
  delta = checks.check_delta(delta)
  return ExpressionSettings(
      layer=layer, pred_layer=layer if pred_layer is None else (
          None if pred_layer == "X" else pred_layer),
      normalize=norm_real, pred_normalize=norm_pred,
      pred_normalize_option="normalize" if pred_normalize is None else "pred_normalize",
      delta=delta, chunk_size=chunk_size)


def _genes(genes: Any, n_top_genes: Any, strict_genes: bool) -> GeneSettings:
  """The gene selection, checked (the given genes are matched to the files later)."""
  if genes is not None and n_top_genes is not None:
    raise ValueError("give either `genes` or `n_top_genes`, not both")
  if isinstance(genes, str):  # iterating would give its letters
    raise TypeError(f"`genes` must be a list of gene names, got the string {genes!r}; pass "
                    f"[{genes!r}] for one gene")
  if n_top_genes is not None and (isinstance(n_top_genes, bool) or not isinstance(
      n_top_genes, (int, np.integer)) or n_top_genes < 1):
    raise ValueError(f"`n_top_genes` must be an integer >= 1, got {n_top_genes!r}")
  return GeneSettings(genes=None if genes is None else tuple(str(g) for g in genes),
                      n_top_genes=n_top_genes, strict_genes=strict_genes)
