"""Tables, figures and the page of the soft-AUC-F1 training study (`bench_soft_training.py`).

A run's curves are ``{"val": {metric: [S, R+1]}, "test": {...}}`` over its
checkpoints (one per round of training steps; checkpoint 0 is the
initialisation). The reported checkpoint of a seed is its first with the best
validation hard AUC-F1. Gains are paired over seeds (same task draw,
same initialisation): mean difference to MSE alone ± its standard error.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import stats

LABELS = {"mse": "MSE alone", "soft_auc_f1": "+ soft AUC-F1 (loss default, global units)",
          "soft_auc_f1_local": "+ soft AUC-F1, tracking units (local)",
          "infonce": "+ InfoNCE", "pairwise": "+ pairwise logistic", "approx_mrr": "+ approx. MRR",
          "soft_hit": "+ soft hit@1 (no null, global units)"}
# validation signals, oriented so that larger is better
SIGNALS = {"hard_auc_f1": ("hard AUC-F1", 1.0), "soft_auc_f1": ("soft AUC-F1", 1.0),
           "mse": ("MSE", -1.0), "pearson": ("Pearson of deltas", 1.0),
           "hit1": ("hit@1 (no null)", 1.0)}


def at_best(curves, signal="hard_auc_f1", sign=1.0):
  """Every metric at each seed's checkpoint picked by the validation `signal` (first best)."""
  idx = np.argmax(sign * curves["val"][signal], axis=1)
  pick = lambda a: np.take_along_axis(a, idx[:, None], axis=1)[:, 0]  # noqa: E731
  out = {part: {k: pick(v) for k, v in curves[part].items()} for part in ("val", "test")}
  out["round"] = idx
  return out


def _ms(a, digits=3):
  a = np.asarray(a, float)
  sd = a.std(ddof=1) if a.size > 1 else float("nan")
  return f"{a.mean():.{digits}f} ± {sd:.{digits}f}"


def gain(task, kind):
  """`(mean, standard error)` of the paired test AUC-F1 difference to MSE alone."""
  d = (at_best(task["runs"][kind])["test"]["hard_auc_f1"]
       - at_best(task["runs"]["mse"])["test"]["hard_auc_f1"])
  se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
  return float(d.mean()), float(se)


def main_table(task):
  head = ["loss", "test AUC-F1", "gain vs MSE (± SE)", "> 2 SE", "test hit@1", "test MSE",
          "round"]
  rows = []
  for kind, curves in task["runs"].items():
    b = at_best(curves)
    g, se = gain(task, kind) if kind != "mse" else (0.0, 0.0)
    rows.append([LABELS[kind], _ms(b["test"]["hard_auc_f1"]),
                 "" if kind == "mse" else f"{g:+.3f} ± {se:.3f}",
                 "" if kind == "mse" else ("yes" if g > 2 * se else "no"),
                 _ms(b["test"]["hit1"]), _ms(b["test"]["mse"], 4),
                 f"{b['round'].mean():.1f}"])
  return head, rows


def _checkpoints(task):
  """Every (run, round >= 1) checkpoint of the random-start runs: val signals and test AUC-F1."""
  val = {k: [] for k in SIGNALS}
  test = []
  for curves in task["runs"].values():
    for k in SIGNALS:
      val[k].append(curves["val"][k][:, 1:].ravel())
    test.append(curves["test"]["hard_auc_f1"][:, 1:].ravel())
  return {k: np.concatenate(v) for k, v in val.items()}, np.concatenate(test)


def _spearman(a, b):
  if np.ptp(a) == 0 or np.ptp(b) == 0:
    return float("nan")
  return float(stats.spearmanr(a, b).statistic)


def signal_table(task):
  val, test = _checkpoints(task)
  refs = task["references"]
  oracle = np.mean([c["test"]["hard_auc_f1"][:, 1:].max(1).mean()
                    for c in task["runs"].values()])
  head = ["validation signal", "Spearman with test AUC-F1", "test AUC-F1 of its pick"]
  head += [f"{name}: value (beats % of checkpoints)" for name in refs]
  rows = []
  for k, (label, sign) in SIGNALS.items():
    picked = np.mean([at_best(c, k, sign)["test"]["hard_auc_f1"].mean()
                      for c in task["runs"].values()])
    row = [label, f"{_spearman(sign * val[k], test):.2f}", f"{picked:.3f}"]
    for ref in refs.values():
      v = float(np.mean(ref["val"][k]))
      beats = 100.0 * np.mean(sign * v >= sign * val[k])
      row.append(f"{v:.3g} ({beats:.0f}%)" + (" **fooled**" if beats >= 50 else ""))
    rows.append(row)
  rows.append(["(oracle: best test checkpoint of each run)", "", f"{oracle:.3f}"]
              + [""] * len(refs))
  return head, rows


def soft_hard_spearman(task):
  """Spearman(soft, hard) on validation across checkpoints, and soft vs test hard."""
  val, test = _checkpoints(task)
  return (_spearman(val["soft_auc_f1"], val["hard_auc_f1"]),
          _spearman(val["soft_auc_f1"], test))


def collapsed_table(task):
  head = ["loss", "test AUC-F1 at start", "after round 1", "at the best validation checkpoint",
          "first round with validation AUC-F1 > 0.05 (per seed)", "last round"]
  rows = []
  for kind, c in task["collapsed"].items():
    t = c["test"]["hard_auc_f1"]
    out_of = [int(np.argmax(v > 0.05)) if np.any(v > 0.05) else None
              for v in c["val"]["hard_auc_f1"]]
    first = ", ".join("never" if e is None else str(e) for e in out_of)
    rows.append([LABELS[kind], f"{t[:, 0].mean():.3f}", _ms(t[:, 1]),
                 _ms(at_best(c)["test"]["hard_auc_f1"]), first, _ms(t[:, -1])])
  return head, rows


def md_table(head, rows):
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def goal(results):
  """Per auxiliary loss: the task groups (toy / sim / lincs) where every model gains > 2 SE."""
  groups = {}
  for task in results:
    groups.setdefault(task["name"].split("_")[0], []).append(task)
  out = {}
  for kind in results[0]["runs"] if results else ():
    if kind == "mse":
      continue
    met = [g for g, ts in groups.items()
           if all((lambda m, s: m > 2 * s)(*gain(t, kind)) for t in ts)]
    out[kind] = dict(groups=met, met=len(met) >= 2 and "lincs" in met and len(groups) >= 3)
  return out


def figure(task, path, settings_steps):
  """Mean curves over seeds: test AUC-F1, hit@1, MSE; test AUC-F1 from the collapsed start."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
  panels = [("runs", "hard_auc_f1", "test hard AUC-F1"), ("runs", "hit1", "test hit@1"),
            ("runs", "mse", "test MSE"),
            ("collapsed", "hard_auc_f1", "test hard AUC-F1, collapsed start")]
  for ax, (which, metric, title) in zip(axes, panels):
    for kind, c in task[which].items():
      v = c["test"][metric]
      ax.plot(np.arange(v.shape[1]), v.mean(0), label=LABELS[kind], lw=2 if kind == "mse" else 1.3,
              color="black" if kind == "mse" else None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"round ({settings_steps} steps)")
  axes[0].legend(fontsize=7)
  fig.suptitle(f"{task['name']}: {task['description'].replace('`', '')} (mean over seeds)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def summary(results, settings):
  out = dict(settings=settings, tasks={})
  for task in results:
    t = dict(description=task["description"], losses={})
    for kind, curves in task["runs"].items():
      b = at_best(curves)
      t["losses"][kind] = dict(
          test_auc_f1=b["test"]["hard_auc_f1"].tolist(), test_hit1=b["test"]["hit1"].tolist(),
          test_mse=b["test"]["mse"].tolist(), round=b["round"].tolist(),
          gain=None if kind == "mse" else gain(task, kind))
    t["soft_hard_spearman"] = soft_hard_spearman(task)
    out["tasks"][task["name"]] = t
  out["goal"] = goal(results)
  return out


INTRO = """# Training with the soft AUC-F1 against standard ranking losses

Generated by `{command}` ({minutes:.1f} min on {cpus} CPU cores shared with other work,
load average at the start {load}; jax {jax}). Issue 14 (part 2) and issue 19: does an auxiliary ranking loss next to
MSE raise the held-out hard AUC-F1, and which validation signal picks good checkpoints?

**Setup** (identical for every task, nothing tuned per task): Adam (lr {lr}), minibatches
of {batch} perturbations, {rounds} rounds of {steps} steps (checkpoints; one round is one
epoch of the toy task), {seeds} seeds (a seed draws the task or the
held-out split, the initialisation, the batch order and the null replicates). Main loss:
MSE divided by the MSE of the training mean (so that λ weighs the same everywhere);
auxiliary losses added with λ = {lam}: the soft AUC-F1 as `tb.make_soft_auc_f1_loss`
computes it at its defaults (default temperature, `relative="global"`: temperatures in
units of the global score spreads; with a model-in-the-loop null of {n_null_train} replicates
of the batch's inputs with shuffled features inside the loss, drawn as the factory draws
them; checked against the factory in the smoke test), the same soft AUC-F1 in the tracking
units of `tb.soft_auc_f1`'s default (`relative="local"`: fractions of each query's local
gaps, the units in which the soft value tracks the hard metric), InfoNCE
(`tb.softmax_ce_loss`), pairwise logistic (`tb.pairwise_logistic_loss`), approximate-rank
MRR (`tb.approx_mrr_loss`), all three at τ = {tau} of the score spread, and the soft hit@1
without the null term (`tb.soft_hit_loss`, default temperature, `relative="global"`: the
first soft AUC-F1 row without its null). The validation signal "soft AUC-F1" is
`tb.soft_auc_f1` at its defaults (tracking units). The candidates of every
auxiliary loss are all training targets; similarities are negative squared Euclidean.

**Evaluation** after every round on a validation set and a disjoint test set of held-out
perturbations (query `q` ↔ candidate `q` of its own set): hard AUC-F1 with an exact
model-in-the-loop null ({n_null_eval} replicates with shuffled input features: the
definition of `tb.model_null`, recomputed inside the jitted evaluation and checked
against `tb.model_null` in the smoke test), soft AUC-F1 on the same replicates, hit@1
without a null, MSE, and the Pearson correlation of predicted and true deltas. The
reported checkpoint of each run is the one with the best validation hard AUC-F1
(early stopping). Gains are paired over seeds: mean difference to MSE alone ± its
standard error; "> 2 SE" marks a gain above two standard errors.
"""


def write(results, settings, out_dir):
  """Writes `soft_training.md` and one figure per task into `out_dir`; returns the page."""
  m = settings["machine"]
  lines = [INTRO.format(cpus=m.get("cpus"), jax=m.get("jax"), load=m.get("load_average"),
                        **settings), "## Tasks", ""]
  lines += [f"- `{t['name']}`: {t['description']}" for t in results]
  lines += [""]
  for task in results:
    name = task["name"]
    png = f"soft_training_{name}.png"
    figure(task, os.path.join(out_dir, png), settings["steps"])
    rho_val, rho_test = soft_hard_spearman(task)
    lines += [f"## Task `{name}`", "", task["description"] + ".", "",
              "Test metrics at the early-stopping checkpoint (mean ± sd over seeds):", "",
              md_table(*main_table(task)), "",
              f"Soft vs hard AUC-F1 across all checkpoints (validation, Spearman): "
              f"{rho_val:.2f}; soft validation vs hard test: {rho_test:.2f}.", "",
              "Validation signals across the checkpoints of every run (rounds ≥ 1, all "
              "losses and seeds). A reference model is **fooled**-flagged when the signal "
              "rates it at least as high as half of the trained checkpoints:", "",
              md_table(*signal_table(task)), "",
              "Collapsed start (every prediction the training mean: last layer 0, bias = "
              f"mean), MSE + λ·aux as above, {settings['collapsed_rounds']} rounds:", "",
              md_table(*collapsed_table(task)), "",
              f"![{name}]({png})", ""]
  lines += ["## Goal of issue 14", "",
            "A gain larger than two standard errors on at least two of the three tasks (toy, "
            "simulator: every model, LINCS), the real-data task among them, without per-task "
            "tuning:", ""]
  for kind, g in goal(results).items():
    verdict = lambda m, s: ("yes" if m > 2 * s else  # noqa: E731
                            "no, lower by > 2 SE" if m < -2 * s else "no")
    per_task = ", ".join(f"{t['name']} {verdict(m, s)} ({m:+.3f} ± {s:.3f})"
                         for t in results for m, s in [gain(t, kind)])
    lines.append(f"- {LABELS[kind]}: gain > 2 SE per task: {per_task}; task groups with "
                 f"> 2 SE on every model: {', '.join(g['groups']) or 'none'}; goal "
                 f"{'met' if g['met'] else 'not met'}.")
  text = "\n".join(lines).rstrip() + "\n"
  with open(os.path.join(out_dir, "soft_training.md"), "w") as f:
    f.write(text)
  return text
