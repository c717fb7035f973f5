"""Target genes left out of each perturbation's comparisons (SPEC §7).

The `target_genes` option checked and described, the label -> genes map read
from a mapping or an `obs` column, and `Targets`: per-query gene indices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from twinbench_jax._src.data import profiles as profiles_lib


def check_target_genes(target_genes: Any) -> Any:
  """`target_genes` checked before any data is read (SPEC §7).

  Returns:
    None, an `obs` column name (str), or a dict label -> tuple of gene names.
  """
  if target_genes is None:
    return None
  if isinstance(target_genes, str):
    column = target_genes[len("obs:"):] if target_genes.startswith("obs:") else target_genes
    if not column:
      raise ValueError("`target_genes` names an empty obs column; give 'COLUMN' or "
                       "'obs:COLUMN', or a mapping perturbation -> gene(s)")
    return column
  if isinstance(target_genes, pd.Series):
    items = list(target_genes.items())  # a label may repeat: one row per target
  elif isinstance(target_genes, Mapping):
    items = list(target_genes.items())
  else:
    raise TypeError(
        "`target_genes` must be None, a mapping perturbation label -> gene name(s), or the name "
        f"of an obs column of adata_real holding each cell's target gene; got "
        f"{type(target_genes).__name__}")
  out: dict[str, list[str]] = {}
  for label, value in items:
    if value is None:
      value = []
    elif isinstance(value, str):
      value = [value]
    elif isinstance(value, Mapping) or not hasattr(value, "__iter__"):
      raise TypeError(f"`target_genes`[{label!r}] must be a gene name or a list of gene names, "
                      f"got {type(value).__name__}")
    value = list(value)
    bad = [g for g in value if not isinstance(g, str)]
    if bad:
      raise TypeError(f"`target_genes`[{label!r}] must hold gene names (str), got {bad[0]!r}")
    out.setdefault(str(label), []).extend(value)
  return {label: tuple(dict.fromkeys(g)) for label, g in out.items()}


def describe_target_spec(spec: Any) -> Optional[str]:
  """How the report's settings record `target_genes`."""
  if spec is None:
    return None
  if isinstance(spec, str):
    return f"obs:{spec}"
  return f"mapping of {len(spec)} perturbation(s)"


def target_map(spec, real, real_key, real_labels, pred, pred_key, known) -> Optional[dict]:
  """Perturbation label -> target gene names, from the checked `target_genes`.

  `real_labels`: the `profiles.Labels` of the real cells.
  """
  if spec is None:
    return None
  if isinstance(spec, str):
    per_cell = real.obs_strings(
        spec, hint="Pass the obs column of adata_real that holds each cell's target gene as "
        "`target_genes` (CLI: --target-genes obs:COLUMN), or a mapping perturbation -> gene(s).")
    return {label: tuple(g) for label, g in
            profiles_lib.targets_by_label(real_labels.per_cell(), per_cell).items()}
  unknown = [label for label in spec if label not in known]
  if unknown:
    where = f"{real.where(f'obs[{real_key!r}]')} or {pred.where(f'obs[{pred_key!r}]')}"
    raise ValueError(
        f"`target_genes` names {len(unknown)} perturbation label(s) found in neither file: "
        f"{profiles_lib._show(unknown)}; keys must be labels of {where} "
        f"(labels: {profiles_lib._show(sorted(known))})")
  return dict(spec)


@dataclasses.dataclass(frozen=True)
class Targets:
  """Each perturbation's target genes among the evaluated genes (SPEC §7).

  Attributes:
    index_of: label -> positions of its targets in the evaluated genes.
    gene_names: the evaluated gene names.
    width: `T`, the most targets of one ranked perturbation (at least 1).
  """

  index_of: Mapping[str, tuple[int, ...]]
  gene_names: np.ndarray
  width: int

  @classmethod
  def build(cls, mapping: Mapping[str, Sequence[str]], queries, candidates, genes,
            notes: list) -> Optional["Targets"]:
    """The targets of the ranked perturbations; notes the ignored genes. None: nothing left."""
    genes = np.asarray(genes)
    pos = {str(g): i for i, g in enumerate(genes.tolist())}
    used = list(dict.fromkeys([*queries, *candidates]))
    index_of, ignored = {}, []
    for label in used:
      found = [pos[g] for g in mapping.get(label, ()) if g in pos]
      ignored += [g for g in mapping.get(label, ()) if g not in pos]
      if found:
        index_of[label] = tuple(found)
    if ignored:
      ignored = list(dict.fromkeys(ignored))
      notes.append(f"target_genes: {len(ignored)} target gene(s) of the ranked perturbations are "
                   f"not among the {len(genes)} evaluated genes and are ignored: "
                   f"{profiles_lib._show(ignored, 5)}")
    with_targets = [q for q in queries if q in index_of]
    bare = [label for label in index_of if len(set(index_of[label])) >= len(genes)]
    if bare:  # all of its distances would be over 0 genes: every candidate ties
      raise ValueError(
          f"target_genes leaves no gene to compare {profiles_lib._show(bare, 5)} on: their "
          f"target gene(s) are all {len(genes)} evaluated gene(s); evaluate on more genes "
          "(`genes`, `n_top_genes`) or leave out `target_genes`")
    if not index_of:
      notes.append("target_genes: no target gene of a ranked perturbation is among the "
                   "evaluated genes; nothing is excluded")
      return None
    n_genes = len({g for q in with_targets for g in index_of[q]})
    notes.append(f"target_genes: {len(with_targets)} of the {len(queries)} queried "
                 f"perturbations have their target gene(s) left out of their distances "
                 f"({n_genes} gene(s) in all)")
    return cls(index_of, genes, max(len(v) for v in index_of.values()))

  def index(self, labels) -> np.ndarray:
    """`[n, T]` int32 target gene positions of each label, padded with -1."""
    out = np.full((len(labels), self.width), -1, np.int32)
    for i, label in enumerate(labels):
      idx = self.index_of.get(str(label), ())
      out[i, :len(idx)] = idx
    return out

  def keep(self, labels, n_genes: int) -> np.ndarray:
    """`[n, G]` bool: False at each label's target genes."""
    idx = self.index(labels)
    keep = np.ones((len(labels), n_genes), bool)
    rows, cols = np.nonzero(idx >= 0)
    keep[rows, idx[rows, cols]] = False
    return keep

  def names(self, labels) -> list[str]:
    """Each label's excluded genes, joined by ``;`` (empty when none)."""
    genes = self.gene_names.tolist()
    return [";".join([genes[i] for i in self.index_of.get(str(label), ())]) for label in labels]
