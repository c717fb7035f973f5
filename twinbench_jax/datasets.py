"""Built-in data: the perturbation simulator behind ``twinbench demo`` and a toy training task.

``tb.datasets.simulate_perturbations(key)`` draws a small screen (real and
control cells) whose perturbations share a large "popular" response, the
setting where models collapse to the mean; ``tb.datasets.make_toy_task(key)``
is a regression task of the same kind with inputs to learn from, and
``toy_mlp_init`` / ``toy_mlp_predict`` a plain-JAX MLP to train on it.
"""

from twinbench_jax._src.datasets.simulate import SimulatedData, simulate_perturbations
from twinbench_jax._src.datasets.toy_task import (
    ToyTask,
    make_toy_task,
    toy_mlp_init,
    toy_mlp_predict,
)

__all__ = [
    "SimulatedData",
    "ToyTask",
    "make_toy_task",
    "simulate_perturbations",
    "toy_mlp_init",
    "toy_mlp_predict",
]
