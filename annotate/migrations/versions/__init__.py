"""Alembic revision scripts (one per schema version; see ``onbrand.annotate.migrations``)."""
