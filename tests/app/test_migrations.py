from sqlalchemy import create_engine, inspect

from app.db.migrate import downgrade, upgrade
from app.db.models import Base

TABLES = {"owners", "api_keys", "datasets", "images", "jobs", "scores", "metrics", "checkpoints"}


def _tables(url):
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_run_up_down_and_up_again(empty_db_url):
    upgrade(empty_db_url)
    assert _tables(empty_db_url) >= TABLES
    downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) & TABLES == set()
    upgrade(empty_db_url)
    assert _tables(empty_db_url) >= TABLES


def test_migrated_schema_matches_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
