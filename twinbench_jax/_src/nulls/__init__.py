"""Permutation nulls: the model, precomputed and label nulls and their sharding.

Built on `core`; replicates are streamed, keys are `fold_in(key, b)`.
"""
