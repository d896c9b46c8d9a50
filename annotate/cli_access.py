"""``onbrand annotate`` commands for the schema and for access: migrate, revoke, rotate, audit.

::

    onbrand annotate migrate   --db sqlite:///annotations.db       # prints 'from -> to' revisions
    onbrand annotate annotator --db ... --project aurora --role reviewer --expires-in-days 30 carol
    onbrand annotate revoke    --db ... --project aurora alice
    onbrand annotate rotate    --db ... --project aurora bob       # prints bob's new token
    onbrand annotate audit     --db ... [--project aurora] [--json]

Every change made here is audited with actor ``cli``. Errors are ``ValueError`` (printed without a
traceback, exit 2).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys


def expires_in(days: float | None) -> _dt.datetime | None:
    """The UTC time ``days`` from now (None: never expires)."""
    if days is None:
        return None
    if not days > 0:
        raise ValueError(f"--expires-in-days must be > 0, got {days}")
    return _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=days)


def member_args(sp) -> None:
    """Options of ``onbrand annotate annotator`` beyond the names."""
    from onbrand.annotate.db import ROLES

    sp.add_argument("--role", default="annotator", choices=ROLES, help="member role (default annotator)")
    sp.add_argument("--expires-in-days", type=float, default=None, help="token lifetime (default: none)")


def run_migrate(url: str) -> str:
    """Upgrade ``url`` to the head revision; a one-line report of what was done."""
    from sqlalchemy.engine import make_url

    from onbrand.annotate.db import migrate

    before, after = migrate(url)  # checks the URL first
    shown = make_url(url).render_as_string(hide_password=True)
    if before == after:
        return f"{shown}: schema already at revision {after}"
    return f"{shown}: schema migrated {before or 'empty'} -> {after}"


def cmd_migrate(args) -> int:
    print(run_migrate(args.db))
    return 0


def _member_call(fn, args):
    from onbrand.annotate.cli import _project, _sessions

    with _sessions(args) as s:
        try:
            return fn(s, _project(s, args.project), args.name)
        except LookupError as e:
            raise ValueError(str(e)) from None


def cmd_revoke(args) -> int:
    from onbrand.annotate.access import revoke

    ann = _member_call(revoke, args)
    print(f"revoked {ann.name} ({ann.role}) in project {args.project}")
    return 0


def cmd_rotate(args) -> int:
    from onbrand.annotate.access import rotate

    expires = expires_in(args.expires_in_days)
    token = _member_call(lambda s, p, n: rotate(s, p, n, expires_at=expires), args)
    print(f"{args.name}\t{token}")
    return 0


def cmd_audit(args) -> int:
    from onbrand.annotate.access import audit_rows
    from onbrand.annotate.cli import _project, _sessions

    with _sessions(args) as s:
        project = _project(s, args.project) if args.project else None
        rows = audit_rows(s, project, limit=args.limit)
    rows.reverse()  # oldest first, like a log
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        detail = json.dumps(r["detail"], sort_keys=True)
        print(f"{r['at']}  {r['actor']} ({r['role']})  {r['action']}  {r['project'] or '-'}  {detail}")
    if not rows:
        print("no audit entries", file=sys.stderr)
    return 0


def register(asub, common) -> None:
    """Add the commands to ``onbrand annotate``'s subparsers (``common`` adds --db/--project)."""
    sp = asub.add_parser("migrate", help="upgrade the database schema to this release (idempotent)")
    common(sp, project=False)
    sp.set_defaults(func=cmd_migrate)

    sp = asub.add_parser("revoke", help="revoke a member's token at once (their judgements are kept)")
    common(sp)
    sp.add_argument("name")
    sp.set_defaults(func=cmd_revoke)

    sp = asub.add_parser("rotate", help="give a member a new token (printed once); the old one stops working")
    common(sp)
    sp.add_argument("name")
    sp.add_argument("--expires-in-days", type=float, default=None, help="new lifetime (default: keep)")
    sp.set_defaults(func=cmd_rotate)

    sp = asub.add_parser("audit", help="the audit log of admin and reviewer actions (oldest first)")
    common(sp, project=False)
    sp.add_argument("--project", default=None, help="only this project's entries")
    sp.add_argument("--limit", type=int, default=1000, help="newest N entries (default 1000)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_audit)
