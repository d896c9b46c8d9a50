"""Alembic environment of the annotation database.

:mod:`onbrand.annotate.migrations` runs it with an open connection (``config.attributes
["connection"]``) inside the transaction that holds the schema lock; the alembic command line
(``alembic -x`` is not needed: set ``sqlalchemy.url``) works too, for developers writing a revision.
"""

from __future__ import annotations

from alembic import context

from onbrand.annotate.db import Base, make_engine

config = context.config
# render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table when needed.
OPTIONS = dict(target_metadata=Base.metadata, render_as_batch=True, compare_type=True)


def _run(connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


main()
