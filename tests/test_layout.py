"""The package's layering: arrows point down, the array layers stay free of the AnnData world."""

import ast
import pathlib
import subprocess
import sys
import warnings

import jax
import pytest

import twinbench_jax as tb

SRC = pathlib.Path(tb.__file__).parent / "_src"
# Lower number = lower layer; a module may import its own layer or lower ones.
LAYERS = {"core": 1, "datasets": 1, "nulls": 2, "soft": 3, "training": 4, "data": 5,
          "evaluate": 6}
ARRAY_LAYERS = ("core", "nulls", "soft", "training", "datasets")
HEAVY = ("anndata", "pandas", "matplotlib", "tqdm", "h5py")


def _imports(path, *, top_level_only):
  """`(module name, line)` of every import in `path` (module level only when asked)."""
  tree = ast.parse(path.read_text())
  nodes = tree.body if top_level_only else ast.walk(tree)
  found = []
  for node in nodes:
    if isinstance(node, ast.Import):
      found += [(alias.name, node.lineno) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.append((node.module, node.lineno))
      if node.module == "twinbench_jax._src":  # `from twinbench_jax._src import core`
        found += [(f"twinbench_jax._src.{a.name}", node.lineno) for a in node.names]
  return found


def _layer_of(module):
  parts = module.split(".")
  if parts[:2] != ["twinbench_jax", "_src"] or len(parts) < 3:
    return None
  return parts[2]


def test_every_module_sits_in_a_layer_sub_package():
  loose = sorted(p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "version.py",
                                                                      "types.py"))
  assert not loose, f"modules outside a layer sub-package: {loose}"
  packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
  assert packages == set(LAYERS), packages


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_point_down(package):
  for path in sorted((SRC / package).glob("*.py")):
    for module, line in _imports(path, top_level_only=False):
      target = _layer_of(module)
      if target is None or target in ("version", "types"):
        continue
      assert target in LAYERS, f"{path.name}:{line} imports {module}, not in a layer"
      assert LAYERS[target] <= LAYERS[package], (
          f"{package}/{path.name}:{line} imports {module}: an arrow up from {package} to {target}")


@pytest.mark.parametrize("package", ARRAY_LAYERS)
def test_array_layers_import_no_heavy_library_at_module_level(package):
  for path in sorted((SRC / package).glob("*.py")):
    for module, line in _imports(path, top_level_only=True):
      assert module.split(".")[0] not in HEAVY, f"{package}/{path.name}:{line} imports {module}"


def test_importing_the_package_and_its_array_layers_loads_no_heavy_library():
  modules = [f"twinbench_jax._src.{pkg}.{p.stem}" for pkg in ARRAY_LAYERS
             for p in sorted((SRC / pkg).glob("*.py")) if p.stem != "__init__"]
  code = ("import sys, importlib, twinbench_jax\n"
          f"for m in {modules!r}: importlib.import_module(m)\n"
          f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "", f"loaded by the array layers: {out.stdout.strip()}"


def test_lazy_names_resolve_to_the_anndata_world_objects():
  from twinbench_jax._src.data import profiles
  from twinbench_jax._src.evaluate import evaluate as evaluate_lib
  assert tb.evaluate is evaluate_lib.evaluate
  assert tb.Report is evaluate_lib.Report
  assert tb.pseudobulk is profiles.pseudobulk
  assert all(hasattr(tb, name) for name in tb.__all__)
  assert set(tb.__all__) <= set(dir(tb))
  with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
    getattr(tb, "no_such_name")


@pytest.mark.parametrize("name", ["SimulatedData", "ToyTask", "make_toy_task",
                                  "simulate_perturbations", "toy_mlp_init", "toy_mlp_predict"])
def test_moved_datasets_names_warn_and_still_work(name):
  with pytest.warns(DeprecationWarning, match=f"twinbench_jax.datasets.{name}"):
    old = getattr(tb, name)
  assert old is getattr(tb.datasets, name)
  assert name not in tb.__all__ and name in tb.datasets.__all__


def test_datasets_namespace_needs_no_warning():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    data = tb.datasets.simulate_perturbations(jax.random.key(0), n_perturbations=6, n_genes=10,
                                              n_cells=3)
  assert data.true_means.shape == (6, 10) and data.cells.shape == (18, 10)
