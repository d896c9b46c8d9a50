"""onbrand.serve: after release. ``guard`` (a brand-checking OpenAI-compatible proxy in front of the
served model, with a conversation log) and ``monitor`` (drift of what the model says against the
release eval, and flagged answers back to annotators)."""

# Shadowing trap: this folder is installed as onbrand.serve. Imported bare (for example from the
# repository root without PYTHONSAFEPATH=1) it would hide any unrelated PyPI package 'serve'.
if __name__ != "onbrand.serve":  # pragma: no cover
    raise ImportError(f"'{__name__}' is onbrand's serve folder: import onbrand.serve instead")
