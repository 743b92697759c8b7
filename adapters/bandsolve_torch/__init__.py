"""PyTorch adapter for bandsolve (placeholder until issue 5 lands)."""
