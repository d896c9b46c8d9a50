"""onbrand.data.formats."""
