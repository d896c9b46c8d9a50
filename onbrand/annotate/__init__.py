"""onbrand.annotate: the annotation web app (FastAPI + server-rendered HTML)."""
