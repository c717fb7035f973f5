"""Permutation nulls: `model`, `precomputed`, `label` (on `result`, `checks`, `predict`, `sources`,
`scoring`), `arrays`; replicates over devices (`streaming`, `sharding`), queries (`query_*`).
"""
