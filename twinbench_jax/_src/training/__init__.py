"""Training and validation signals: AUC-F1 losses, ranking losses, metric accumulators.

Built on `soft` and `nulls`; optax-style loss factories and Flax NNX helpers.
"""
