"""SIMD lane kernels: ``W`` systems solved side by side, one per vector lane, by generated
straight-line code specialised on ``(D, O, E)`` (:mod:`bandsolve.kernels.codegen`),
driven by :mod:`.solve`."""
