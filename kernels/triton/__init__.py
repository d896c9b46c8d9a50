"""onbrand.kernels.triton."""
