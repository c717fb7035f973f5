"""Permutation nulls: `model`, `precomputed` and `label` nulls over `result`, `checks`, `predict`,
`sources`, `scoring` and `streaming` (replicates over devices); `arrays` and `sharding`.
"""
