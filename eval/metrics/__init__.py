"""onbrand.eval.metrics."""
