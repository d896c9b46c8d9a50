"""onbrand.annotate: the annotation web app (FastAPI + server-rendered HTML) and its CLI."""

# Shadowing trap: this folder is installed as onbrand.annotate. Imported bare (for example from the
# repository root without PYTHONSAFEPATH=1) it would hide any unrelated PyPI package 'annotate'.
if __name__ != "onbrand.annotate":  # pragma: no cover
    raise ImportError(f"'{__name__}' is onbrand's annotate folder: import onbrand.annotate instead")
