"""onbrand.training — see README.md for what lives here."""

# Shadowing trap: this folder is installed as onbrand.training. Imported bare (for example from the
# repository root without PYTHONSAFEPATH=1) it would hide the unrelated PyPI package 'training'.
if __name__ != "onbrand.training":  # pragma: no cover
    raise ImportError(f"'{__name__}' is onbrand's training folder: import onbrand.training instead")
