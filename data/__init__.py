"""onbrand.data — see README.md for what lives here."""

# Shadowing trap: this folder is installed as onbrand.data. Imported bare (for example from the
# repository root without PYTHONSAFEPATH=1) it would hide the unrelated PyPI package 'data'.
if __name__ != "onbrand.data":  # pragma: no cover
    raise ImportError(f"'{__name__}' is onbrand's data folder: import onbrand.data instead")
