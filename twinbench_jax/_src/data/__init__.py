"""The AnnData world: reading files, pseudobulk profiles, deltas and baselines.

The only layer below `evaluate` that imports anndata, pandas or h5py.
"""
