"""onbrand.eval — see README.md for what lives here."""

# Shadowing trap: this folder is installed as onbrand.eval. Imported bare (for example from the
# repository root without PYTHONSAFEPATH=1) it would hide the unrelated PyPI package 'eval'.
if __name__ != "onbrand.eval":  # pragma: no cover
    raise ImportError(f"'{__name__}' is onbrand's eval folder: import onbrand.eval instead")
