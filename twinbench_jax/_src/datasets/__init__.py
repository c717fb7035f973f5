"""Built-in data: the perturbation simulator and the toy training task.

Public as `twinbench_jax.datasets`.
"""
