from sqlalchemy import create_engine, inspect

from app.db.migrate import downgrade, upgrade
from app.db.models import Base

TABLES = {"owners", "api_keys", "datasets", "images", "jobs", "scores", "metrics", "checkpoints", "job_reports"}


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


def test_migration_0002_keeps_existing_scores(empty_db_url):
    """Scores written under 0001 read back with empty other_scores after upgrading."""
    import uuid

    from sqlalchemy import text

    upgrade(empty_db_url, "0001")
    engine = create_engine(empty_db_url)
    ids = {k: uuid.uuid4() for k in ("owner", "dataset", "job")}
    hexed = {k: (v if engine.dialect.name == "postgresql" else v.hex) for k, v in ids.items()}
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO owners (id, name, created_at) VALUES (:o, 'x', CURRENT_TIMESTAMP)"),
                {"o": hexed["owner"]},
            )
            conn.execute(
                text(
                    "INSERT INTO datasets (id, owner_id, name, storage_key, n_images, n_masks, size_bytes, attributes, warnings, created_at) "
                    "VALUES (:d, :o, 'd', 'k', 1, 1, 1, '[]', '[]', CURRENT_TIMESTAMP)"
                ),
                {"d": hexed["dataset"], "o": hexed["owner"]},
            )
            conn.execute(
                text(
                    "INSERT INTO jobs (id, owner_id, dataset_id, spec, status, progress, attempt, cancel_requested, created_at) "
                    "VALUES (:j, :o, :d, '{}', 'succeeded', 1, 1, false, CURRENT_TIMESTAMP)"
                ),
                {"j": hexed["job"], "o": hexed["owner"], "d": hexed["dataset"]},
            )
            conn.execute(
                text(
                    "INSERT INTO scores (job_id, rank, image_id, htl_score, is_htl, per_sparsity, attributes) "
                    "VALUES (:j, 1, 'a', 0.5, true, '{}', '{}')"
                ),
                {"j": hexed["job"]},
            )
        upgrade(empty_db_url)
        with engine.connect() as conn:
            value = conn.execute(text("SELECT other_scores FROM scores")).scalar_one()
            warnings = conn.execute(text("SELECT warnings FROM jobs")).scalar_one()
        assert value in ({}, "{}") and warnings in ([], "[]")  # 0003 keeps the job and its scores
        downgrade(empty_db_url, "0001")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM scores")).scalar_one() == 1
    finally:
        engine.dispose()
