"""onbrand.eval.metrics: one module per metric family, each registered in ``registry.py``
(its ``metrics.<name>`` switch, computation, report rows); every module here is imported on first use."""
