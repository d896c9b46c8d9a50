"""onbrand.kernels — see README.md for what lives here."""

# Shadowing trap: this folder is installed as onbrand.kernels. Imported bare (for example from the
# repository root without PYTHONSAFEPATH=1) it would hide the unrelated PyPI package 'kernels'.
if __name__ != "onbrand.kernels":  # pragma: no cover
    raise ImportError(f"'{__name__}' is onbrand's kernels folder: import onbrand.kernels instead")
