"""onbrand.eval.engines."""
