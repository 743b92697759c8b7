"""airspeed velocity benchmarks of bandsolve (configuration: asv.conf.json at the root)."""
