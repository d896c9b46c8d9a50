"""onbrand.export: a training run -> a servable, traceable, parity-checked directory, and its verification."""

# Shadowing trap: this folder is installed as onbrand.export. Imported bare (for example from the
# repository root without PYTHONSAFEPATH=1) it would hide any unrelated PyPI package 'export'.
if __name__ != "onbrand.export":  # pragma: no cover
    raise ImportError(f"'{__name__}' is onbrand's export folder: import onbrand.export instead")
