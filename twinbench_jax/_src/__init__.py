"""Private implementation of twinbench_jax, one sub-package per layer.

Arrows point down only: core -> nulls -> soft -> training -> data -> evaluate
(datasets beside them); the public names live in `twinbench_jax/__init__.py`.
"""
