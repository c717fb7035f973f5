"""The differentiable AUC-F1: `temperatures`, soft `ranks`, soft `pvalues`, soft `area`.

Built on `core`; the public names are re-exported by `twinbench_jax/__init__.py`.
"""
