"""gunicorn entry point of the test Glance: Glance's own WSGI app, with SQLite
transactions that wait for each other instead of failing.

Why: oslo.db opens every SQLite transaction with a plain (deferred) ``BEGIN``.
Glance's image updates read the row, then write it. When two such transactions
overlap (a promote's DELETE of an unfinished upload while Glance is still
restoring that upload after the client broke it off), both hold SQLite's read
lock and the second to write is refused at once with "database is locked":
SQLite never waits to upgrade a read lock, as waiting could deadlock. Glance
turns that into HTTP 500. On a loaded machine the overlap is common (seen in
`make test` with a VM booting alongside; reproduced by
tests/unit/release/test_glance_server.py). Production Glance runs on MySQL, where the
second writer waits for the row lock; ``BEGIN IMMEDIATE`` gives SQLite the same
behaviour: a transaction takes the write lock when it starts, so an overlapping
one waits (up to the connection's busy timeout) rather than failing.

Glance's code is unchanged: only the SQLite driver's transaction mode is set,
before Glance creates its engine.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

# oslo.db marks a connection whose BEGIN it has emitted with this key and skips
# its own BEGIN when it is already set (oslo_db/sqlalchemy/engines.py); class
# listeners run before the engine's own, so ours comes first.
_OSLO_MARK = "in_transaction"


@event.listens_for(Engine, "begin")
def _begin_immediate(conn: Connection) -> None:
    if conn.dialect.name == "sqlite" and _OSLO_MARK not in conn.info:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.info[_OSLO_MARK] = True


from glance.wsgi.api import application  # noqa: E402 - after the listener, on purpose

__all__ = ["application"]
