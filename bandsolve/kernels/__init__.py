"""Numba-compilable helpers shared by the CPU and the CUDA kernels."""
