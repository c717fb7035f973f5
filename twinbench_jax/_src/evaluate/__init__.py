"""End-to-end evaluation of AnnData files: `evaluate`, the report, comparisons.

Also the report's plots and the safe output folders; the CLI sits on top.
"""
