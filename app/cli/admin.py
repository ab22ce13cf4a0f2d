"""`htl db` and `htl keys`: the service's database schema and its API keys."""

from __future__ import annotations

import argparse
import sys

from app.cli.common import data_dir_option, redacted, settings_from


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from app.db.migrate import upgrade

    settings = settings_from(args)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url, args.revision)
    print(f"database at {redacted(settings.resolved_database_url)} is at revision {args.revision}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from app.db.migrate import downgrade

    settings = settings_from(args)
    downgrade(settings.resolved_database_url, args.revision)
    print(f"database at {redacted(settings.resolved_database_url)} is at revision {args.revision}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from app.db import queries
    from app.db.session import make_engine, make_sessionmaker

    settings = settings_from(args)
    settings.ensure_dirs()
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as session:
            owner, key = queries.create_api_key(session=session, owner_name=args.owner)
            session.commit()
    finally:
        engine.dispose()
    print(key)
    print(f"(a new API key for owner {owner.name!r}; it is shown only now, store it)", file=sys.stderr)
    return 0


def _with_session(args: argparse.Namespace, action):
    from app.db.session import make_engine, make_sessionmaker

    settings = settings_from(args)
    settings.ensure_dirs()
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as session:
            result = action(session)
            session.commit()
            return result
    finally:
        engine.dispose()


def cmd_keys_list(args: argparse.Namespace) -> int:
    from app.db import queries

    rows = _with_session(
        args,
        lambda s: [
            (k.prefix, name, k.created_at, k.revoked_at)
            for k, name in queries.list_api_keys(session=s, owner_name=args.owner)
        ],
    )
    print(f"{'prefix':<14}{'owner':<20}{'created':<27}revoked")
    for prefix, name, created, revoked in rows:
        print(
            f"{prefix:<14}{name:<20}{created.isoformat(timespec='seconds'):<27}{revoked.isoformat(timespec='seconds') if revoked else '-'}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from app.db import queries

    if len(args.prefix) < 12:
        print(
            "htl: give the key's 12-character prefix, as `htl keys list` shows it (or the whole key)", file=sys.stderr
        )
        return 2
    n = _with_session(args, lambda s: queries.revoke_api_keys(session=s, prefix=args.prefix[:12]))
    if n == 0:
        print(f"htl: no live key starts with {args.prefix[:12]!r}", file=sys.stderr)
        return 1
    print(f"revoked {n} key(s) starting with {args.prefix[:12]!r}")
    return 0


def add_parsers(sub) -> None:
    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="migrate the database to the newest schema")
    up.add_argument("revision", nargs="?", default="head", help="the revision to upgrade to (default head, the newest)")
    data_dir_option(up)
    up.set_defaults(func=cmd_db_upgrade)
    down = db.add_parser("downgrade", help="migrate the database down (default: to an empty schema)")
    down.add_argument(
        "revision", nargs="?", default="base", help="the revision to go down to (default base: an empty database)"
    )
    data_dir_option(down)
    down.set_defaults(func=cmd_db_downgrade)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="print a new API key for an owner (created if new)")
    create.add_argument("--owner", required=True, help="the owner's name; created if new")
    data_dir_option(create)
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser(
        "list", help="list keys by prefix, owner, creation and revocation (never the keys themselves)"
    )
    listing.add_argument("--owner", help="only this owner's keys")
    data_dir_option(listing)
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key: it answers 401 from then on")
    revoke.add_argument("prefix", help="the key's 12-character prefix as `htl keys list` shows it, or the whole key")
    data_dir_option(revoke)
    revoke.set_defaults(func=cmd_keys_revoke)
