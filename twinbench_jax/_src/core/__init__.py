"""The array core: similarities, truth ranks, label-null p-values and the AUC-F1.

Pure JAX and numpy (numba optional); nothing here imports anndata, pandas,
matplotlib, tqdm or h5py.
"""
