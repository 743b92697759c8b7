"""JAX adapter for bandsolve (placeholder until issue 6 lands)."""
