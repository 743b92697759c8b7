"""Numba CPU kernels: block helpers, banded factorisation/substitution, S-MNN pieces.

Kernels take canonical flattened arrays and never validate user input (the core does).
"""
