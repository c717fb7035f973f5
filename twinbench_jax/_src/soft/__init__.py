"""The differentiable relaxation of the AUC-F1: soft ranks, soft p-values, soft area.

Built on `core`; smooth steps with temperatures set from local gaps.
"""
