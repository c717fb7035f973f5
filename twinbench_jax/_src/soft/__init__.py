"""The differentiable AUC-F1: `temperatures`, soft `ranks`, soft `pvalues`, soft `area`.

Built on `core`; `relaxation` gathers the public functions of the four modules.
"""
