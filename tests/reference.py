"""Plain-numpy reference of the TwinBench metrics, written from SPEC.md with loops.

Deliberately slow and literal: every quantity is computed entry by entry in
float64, straight from its definition, so it shares no code (and no
vectorisation tricks) with the library it checks.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

TIE_WEIGHT = {"average": 0.5, "optimistic": 0.0, "pessimistic": 1.0}


def _value(v) -> float:
  """NaN counts as -inf (the library's documented rule)."""
  v = float(v)
  return -math.inf if math.isnan(v) else v


# --- similarity (SPEC §1) -----------------------------------------------------

def similarity(x, y, metric="sqeuclidean"):
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  out = np.zeros((x.shape[0], y.shape[0]))
  for q in range(x.shape[0]):
    for c in range(y.shape[0]):
      a, b = x[q], y[c]
      if metric == "sqeuclidean":
        out[q, c] = -sum((a[g] - b[g]) ** 2 for g in range(len(a)))
      elif metric == "euclidean":
        out[q, c] = -math.sqrt(sum((a[g] - b[g]) ** 2 for g in range(len(a))))
      elif metric == "l1":
        out[q, c] = -sum(abs(a[g] - b[g]) for g in range(len(a)))
      elif metric in ("cosine", "pearson"):
        if metric == "pearson":
          a = [v - sum(a) / len(a) for v in a]
          b = [v - sum(b) / len(b) for v in b]
        na = math.sqrt(sum(v * v for v in a))
        nb = math.sqrt(sum(v * v for v in b))
        dot = sum(a[g] * b[g] for g in range(len(a)))
        out[q, c] = 0.0 if na == 0 or nb == 0 else dot / (na * nb)
      else:
        raise ValueError(metric)
  return out


# --- ranks and the "at K" family (SPEC §2) -------------------------------------

def truth_ranks(s, rel, ties="average"):
  s = np.asarray(s)
  rel = np.asarray(rel)
  w = TIE_WEIGHT[ties]
  out = []
  for q in range(s.shape[0]):
    best = max(_value(s[q, c]) for c in range(s.shape[1]) if rel[q, c])
    rank = 1.0
    for c in range(s.shape[1]):
      if rel[q, c]:
        continue
      v = _value(s[q, c])
      if v > best:
        rank += 1.0
      elif v == best:
        rank += w
    out.append(rank)
  return np.array(out)


def relevant_in_top_k(s, rel, k, ties="average"):
  """|top-K ∩ rel| where a tie block cut by the K-th place is filled by every possible choice.

  Enumerates which members of the cut block take the remaining places:
  "average" is the mean over those choices (random tie-breaking), "optimistic"
  the best one and "pessimistic" the worst one.
  """
  s = np.asarray(s)
  rel = np.asarray(rel)
  out = []
  for q in range(s.shape[0]):
    values = [_value(v) for v in s[q]]
    hits, places = 0.0, k
    for level in sorted(set(values), reverse=True):
      block = [c for c in range(len(values)) if values[c] == level]
      n_rel = sum(1 for c in block if rel[q, c])
      if places >= len(block):
        hits += n_rel
      elif places > 0:
        counts = [sum(1 for c in chosen if rel[q, c])
                  for chosen in itertools.combinations(block, places)]
        hits += {"average": sum(counts) / len(counts), "optimistic": max(counts),
                 "pessimistic": min(counts)}[ties]
      places = max(0, places - len(block))
    out.append(float(hits))
  return np.array(out)


def relevant_in_top_k_sorted(s, rel, k):
  """Without ties: take the K best candidates and count the relevant ones."""
  out = []
  for q in range(len(s)):
    order = sorted(range(len(s[q])), key=lambda c: -float(s[q][c]))
    out.append(float(sum(bool(rel[q][c]) for c in order[:k])))
  return np.array(out)


def hit_at_k(ranks, k):
  return float(np.mean([1.0 if r <= k else 0.0 for r in ranks]))


def mrr(ranks):
  return float(np.mean([1.0 / r for r in ranks]))


def normalized_rank(ranks, rel):
  vals = []
  for q, r in enumerate(ranks):
    n_other = sum(1 for v in rel[q] if not v)
    vals.append(0.0 if n_other == 0 else (r - 1.0) / n_other)
  return float(np.mean(vals))


def recall_precision_f1_at_k(s, rel, k, ties="average"):
  hits = relevant_in_top_k(s, rel, k, ties)
  rec, prec, f1 = [], [], []
  for q, h in enumerate(hits):
    n_rel = sum(1 for v in rel[q] if v)
    r, p = h / n_rel, h / k
    rec.append(r)
    prec.append(p)
    f1.append(0.0 if r + p == 0 else 2 * r * p / (r + p))
  return float(np.mean(rec)), float(np.mean(prec)), float(np.mean(f1))


def top1_counts(s):
  s = np.asarray(s)
  counts = [0.0] * s.shape[1]
  for q in range(s.shape[0]):
    row = [_value(v) for v in s[q]]
    best = max(row)
    winners = [c for c, v in enumerate(row) if v == best]
    for c in winners:
      counts[c] += 1.0 / len(winners)
  return np.array(counts)


def gini(x):
  x = [float(v) for v in x]
  n, total = len(x), sum(x)
  if total == 0:
    return 0.0
  diff = sum(abs(a - b) for a in x for b in x)
  return diff / (2 * n * total)


# --- p-values (SPEC §3) ---------------------------------------------------------

def empirical_pvalues(scores, null):
  scores = np.asarray(scores)
  null = np.asarray(null)
  b_total = null.shape[0]
  out = np.zeros(scores.shape)
  for idx in np.ndindex(scores.shape):
    obs = _value(scores[idx])
    # a NaN null score (a failed replicate) counts against the observed score
    count = sum(1 for b in range(b_total)
                if np.isnan(null[(b,) + idx]) or _value(null[(b,) + idx]) >= obs)
    out[idx] = (1 + count) / (b_total + 1)
  return out


def label_permutation_pvalues(cross):
  cross = np.asarray(cross)
  n = cross.shape[0]
  out = []
  for q in range(n):
    own = _value(cross[q, q])
    out.append(sum(1 for q2 in range(n) if _value(cross[q2, q]) >= own) / n)
  return np.array(out)


def benjamini_hochberg(p):
  p = [float(v) for v in p]
  n = len(p)
  order = sorted(range(n), key=lambda i: p[i])
  adjusted = [0.0] * n
  for pos, i in enumerate(order):
    adjusted[i] = min(min(1.0, n * p[order[j]] / (j + 1)) for j in range(pos, n))
  return np.array(adjusted)


def own_scores(s, rel):
  out = []
  for q in range(len(s)):
    vals = [float(s[q][c]) for c in range(len(s[q])) if rel[q][c]]
    out.append(sum(vals) / len(vals))
  return np.array(out)


def cross_own_scores(s, rel):
  n = len(s)
  out = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      vals = [float(s[i][c]) for c in range(len(s[i])) if rel[j][c]]
      out[i, j] = sum(vals) / len(vals)
  return out


# --- AUC-F1 (SPEC §4) -----------------------------------------------------------

def query_curve_at(p, correct, alpha):
  """(F1, precision, recall) at threshold alpha, query level."""
  n = len(p)
  called = sum(1 for v in p if v <= alpha)
  tp = sum(1 for v, ok in zip(p, correct) if v <= alpha and ok)
  precision = tp / called if called else 0.0
  return 2 * tp / (called + n), precision, tp / n


def candidate_curve_at(p, rel, alpha):
  """Mean over queries of (F1_q, precision_q, recall_q) at threshold alpha."""
  f1s, precs, recs = [], [], []
  for q in range(len(p)):
    retrieved = [c for c in range(len(p[q])) if p[q][c] <= alpha]
    n_rel = sum(1 for v in rel[q] if v)
    tp = sum(1 for c in retrieved if rel[q][c])
    f1s.append(2 * tp / (len(retrieved) + n_rel))
    precs.append(tp / len(retrieved) if retrieved else 0.0)
    recs.append(tp / n_rel)
  return float(np.mean(f1s)), float(np.mean(precs)), float(np.mean(recs))


def step_integral(values, f1_at):
  """SPEC §4: sort the distinct p-values, add 1, sum F1(a_j) (a_{j+1} - a_j)."""
  a = sorted(set(float(v) for v in values))
  a_next = a[1:] + [1.0]
  return sum(f1_at(a[j]) * (a_next[j] - a[j]) for j in range(len(a)))


def auc_f1(p, correct):
  p = [float(v) for v in p]
  correct = [bool(v) for v in correct]
  return step_integral(p, lambda alpha: query_curve_at(p, correct, alpha)[0])


def candidate_auc_f1(p, rel):
  p = np.asarray(p, np.float64)
  rel = np.asarray(rel)
  return step_integral(p.reshape(-1), lambda alpha: candidate_curve_at(p, rel, alpha)[0])


# --- the array pipeline ---------------------------------------------------------

def evaluate_arrays(x, y, rel, metric="sqeuclidean", k=1, ties="average"):
  s = similarity(x, y, metric)
  ranks = truth_ranks(s, rel, ties)
  cross = cross_own_scores(s, rel)
  p = label_permutation_pvalues(cross)
  correct = [r <= k for r in ranks]
  return {
      "scores": s,
      "ranks": ranks,
      "own_scores": np.array([cross[q, q] for q in range(len(ranks))]),
      "pvalues": p,
      "auc_f1": auc_f1(p, correct),
      "hit_at_k": hit_at_k(ranks, k),
      "mrr": mrr(ranks),
      "mean_rank": float(np.mean(ranks)),
      "normalized_rank": normalized_rank(ranks, rel),
  }
