"""`tb.compare`: several saved reports side by side, refused when their numbers differ in meaning."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import twinbench_jax as tb
from twinbench_jax._src.evaluate.compare import BASELINE_LABELS
from adata_helpers import good_pred, make_real


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Three models of the same real file, each report saved to its own folder."""
  real, means = make_real(n_perturbations=6, n_genes=15, seed=3)
  root = tmp_path_factory.mktemp("reports")
  dirs = {}
  for name, noise in (("sharp", 0.2), ("blurred", 1.5), ("noise", 6.0)):
    pred = good_pred(real, means, noise=noise, seed=7)
    report = tb.evaluate(pred, real, name=name)
    dirs[name] = str(root / name)
    report.save(dirs[name], plots=False)
  return real, means, dirs


def _load(path):
  with open(os.path.join(path, "report.json")) as f:
    return json.load(f)


def test_table_rows_equal_each_report(saved):
  _, _, dirs = saved
  comp = tb.compare(*dirs.values())
  assert list(comp.table.index[:3]) == list(dirs)
  for name, path in dirs.items():
    data = _load(path)
    row = comp.table.loc[name]
    assert row["kind"] == "model"
    for col in ("auc_f1", "hit_at_1", "mrr", "mean_rank", "fraction_called", "n_queries"):
      assert row[col] == data[col], (name, col)
    np.testing.assert_array_equal(comp.curves[name]["alphas"], data["curves"]["model"]["alphas"])
  first = _load(dirs["sharp"])
  for base, auc in first["baselines"].items():
    label = BASELINE_LABELS.get(base, f"{base} baseline")
    assert comp.table.loc[label, "auc_f1"] == auc
    assert comp.table.loc[label, "kind"] == "baseline"
  assert comp.shared["null"] == first["null"]
  assert comp.notes == ()


def test_the_sharpest_model_scores_best(saved):
  _, _, dirs = saved
  table = tb.compare(*dirs.values()).table
  assert table.loc["sharp", "mrr"] >= table.loc["blurred", "mrr"] >= table.loc["noise", "mrr"]
  assert table.loc["sharp", "mrr"] > table.loc["noise", "mrr"]


def test_save_writes_csv_json_png(saved, tmp_path):
  _, _, dirs = saved
  comp = tb.compare(*dirs.values())
  paths = comp.save(tmp_path / "cmp")
  assert sorted(os.path.basename(p) for p in paths) == [
      "comparison.csv", "comparison.json", "comparison.png"]
  data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
  assert [r["name"] for r in data["rows"]][:3] == list(dirs)
  assert data["rows"][0]["auc_f1"] == comp.table.iloc[0]["auc_f1"]
  csv = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
  assert csv[0].startswith("name,kind,auc_f1")
  assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_objects_and_dicts_are_accepted(saved):
  _, _, dirs = saved
  from_dirs = tb.compare(*dirs.values()).table
  from_dicts = tb.compare(*[_load(d) for d in dirs.values()], names=list(dirs)).table
  assert from_dirs.equals(from_dicts)


@pytest.mark.parametrize("field, value, named", [
    ("metric_version", "0", "metric_version"),
    ("null", "model", "null"),
    ("n_null", 7, "n_null"),
    ("k", 3, "k"),
])
def test_a_mismatched_summary_field_is_refused_by_name(saved, field, value, named):
  _, _, dirs = saved
  a, b = _load(dirs["sharp"]), _load(dirs["blurred"])
  b[field] = value
  with pytest.raises(ValueError, match=rf"`{named}` differs"):
    tb.compare(a, b)


def test_a_different_gene_set_is_refused(saved, tmp_path):
  real, means, dirs = saved
  pred = good_pred(real, means, noise=0.2, seed=7)
  genes = list(real.var_names[:-2])
  other = tb.evaluate(pred, real, genes=genes, name="fewer genes")
  other.save(tmp_path / "fewer", plots=False)
  with pytest.raises(ValueError, match=r"differs"):
    tb.compare(dirs["sharp"], tmp_path / "fewer")
  # Same count, other genes: only the fingerprint can tell.
  a, b = _load(dirs["sharp"]), _load(dirs["blurred"])
  b["data_fingerprint"] = dict(b["data_fingerprint"], genes="0" * 64)
  with pytest.raises(ValueError, match=r"`data_fingerprint.genes` differs"):
    tb.compare(a, b)


def test_a_different_setting_is_refused_but_the_prediction_file_may_differ(saved):
  _, _, dirs = saved
  a, b = _load(dirs["sharp"]), _load(dirs["blurred"])
  assert a["settings"]["name"] != b["settings"]["name"]
  b["settings"]["pred"] = "elsewhere.h5ad"
  tb.compare(a, b)
  b["settings"]["metric"] = "pearson"
  with pytest.raises(ValueError, match=r"`settings.metric` differs .*'sqeuclidean'.*'pearson'"):
    tb.compare(a, b)


def test_other_perturbations_are_refused(saved):
  _, _, dirs = saved
  a, b = _load(dirs["sharp"]), _load(dirs["blurred"])
  b["per_perturbation"][0]["perturbation"] = "p_other"
  with pytest.raises(ValueError, match=r"`perturbations` differs"):
    tb.compare(a, b)


def test_reports_without_a_fingerprint_are_compared_with_a_note(saved):
  _, _, dirs = saved
  a, b = _load(dirs["sharp"]), _load(dirs["blurred"])
  del b["data_fingerprint"]
  comp = tb.compare(a, b)
  assert len(comp.notes) == 1 and "could not be checked" in comp.notes[0]


def test_bad_arguments(saved, tmp_path):
  _, _, dirs = saved
  with pytest.raises(ValueError, match="at least two reports"):
    tb.compare(dirs["sharp"])
  with pytest.raises(FileNotFoundError, match="no report at"):
    tb.compare(dirs["sharp"], tmp_path / "missing")
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "report.json").write_text("{not json")
  with pytest.raises(ValueError, match="not a readable report.json"):
    tb.compare(dirs["sharp"], tmp_path / "bad")
  with pytest.raises(ValueError, match="distinct names"):
    tb.compare(dirs["sharp"], dirs["blurred"], names=["x", "x"])


def test_cli_compare_writes_the_three_files(saved, tmp_path, capsys):
  from twinbench_jax import cli

  _, _, dirs = saved
  out = tmp_path / "cmp"
  code = cli.main(["compare", *dirs.values(), "--out", str(out)])
  assert code == 0
  printed = capsys.readouterr().out
  assert "sharp" in printed and "split-half baseline" in printed
  assert sorted(p.name for p in out.iterdir()) == [
      ".twinbench-manifest.json", "comparison.csv", "comparison.json", "comparison.png"]
  data = json.loads((out / "comparison.json").read_text())
  assert data["rows"][0]["auc_f1"] == _load(dirs["sharp"])["auc_f1"]
  # Run again: a previous comparison is replaced.
  assert cli.main(["compare", *dirs.values(), "--out", str(out), "--no-plots", "--quiet",
                   "--names", "a,b,c"]) == 0
  assert sorted(p.name for p in out.iterdir()) == [
      ".twinbench-manifest.json", "comparison.csv", "comparison.json"]
  assert [r["name"] for r in json.loads((out / "comparison.json").read_text())["rows"]][:3] == [
      "a", "b", "c"]


def test_cli_compare_refuses_a_mismatch_naming_the_field(saved, tmp_path, capsys):
  from twinbench_jax import cli

  _, _, dirs = saved
  other = tmp_path / "other"
  other.mkdir()
  data = _load(dirs["blurred"])
  data["metric_version"] = "0"
  (other / "report.json").write_text(json.dumps(data))
  code = cli.main(["compare", dirs["sharp"], str(other), "--out", str(tmp_path / "cmp")])
  assert code == 2
  err = capsys.readouterr().err
  assert "twinbench compare: error:" in err and "`metric_version` differs" in err
  assert not (tmp_path / "cmp").exists()
  assert cli.main(["compare", dirs["sharp"], "--out", str(tmp_path / "cmp")]) == 2
  assert "at least two" in capsys.readouterr().err
