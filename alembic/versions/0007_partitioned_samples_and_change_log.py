"""Raw samples keyed by (GPU, start) and, on PostgreSQL, range-partitioned by day; the change log
that invalidates cached chargeback statements

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 11:40:00

PostgreSQL: `sample` becomes `PARTITION BY RANGE (start_at)`, with a DEFAULT partition and one
partition per UTC day (from the first stored sample's day to a week ahead) in the schema
`sample_partitions`, out of the default schema that Alembic compares with the models. The
existing rows are copied over. Statement-level triggers log, once per transaction and table,
the transactions that change what a chargeback statement reads and the span of time the change
touches (read from transition tables), so a cached statement is dropped only for a change that
touches its months. SQLite: the plain table with the new key; no triggers (statements are not
cached there).
"""
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from alembic import op

revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "sample_partitions"
COLUMNS = ("gpu_id", "start_at", "end_at", "energy_mj", "method", "power_mw", "gpu_util_pct", "memory_util_pct",
           "memory_used_bytes", "sm_clock_mhz", "processes", "mig", "sm_active_pct", "tensor_active_pct",
           "dram_bw_pct")
# What a statement reads (chargeback/statements.py, lines.py, prices.py, carbon.py, work/efficiency.py,
# waste.py), and the function that logs the time a change to it touches. unattributed_use is not
# read (unattributed energy is a ledger account); a gpu's name, node, index, last_seen_at are not.
SPANS = {
    "ledger_entry": "wl_change_by_hour", "price_point": "wl_change_by_hour", "carbon_intensity": "wl_change_by_hour",
    "job": "wl_change_of_job", "allocation": "wl_change_of_allocation", "work_report": "wl_change_of_work_report",
    "gpu": "wl_change_of_gpu",
}
UNBOUNDED = ("site", "tariff", "embodied_carbon", "statement")


def _job_life_trigger(job_id: str, lo: str, hi: str) -> str:
    """A trigger on a table of a job's life (the job, its allocations, its work reports): the span
    its rows name, widened to the whole life of their jobs, old rows included (a job moved out of
    a month changes that month too)."""
    return f"""RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; lo timestamptz; hi timestamptz; jlo timestamptz; jhi timestamptz;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT array_agg({job_id}::bigint), min({lo}), max({hi}) INTO ids, lo, hi FROM new_rows;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT ids || array_agg({job_id}::bigint), least(lo, min({lo})), greatest(hi, max({hi}))
        INTO ids, lo, hi FROM old_rows;
    END IF;
    SELECT s.lo, s.hi INTO jlo, jhi FROM wl_job_span(ids) s;
    PERFORM wl_note_change(TG_TABLE_NAME, least(lo, jlo), greatest(hi, jhi));
    RETURN NULL;
END $$"""


FUNCTIONS = {
    # One change_log row per transaction and table, widened by each later statement of that transaction;
    # its id is kept in a transaction-local setting (undone, like the row, by a rolled-back savepoint).
    # NULL start_at / end_at: unbounded on that side.
    "wl_note_change(tbl text, lo timestamptz, hi timestamptz)": """RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    row_id bigint := nullif(current_setting('wattledger.change_log_' || tbl, true), '')::bigint;
BEGIN
    IF lo IS NULL OR hi IS NULL THEN
        RETURN;  -- no row touched
    END IF;
    IF row_id IS NULL THEN
        INSERT INTO change_log (txid, table_name, logged_at, start_at, end_at)
        VALUES (pg_current_xact_id()::text::bigint, tbl, now(), nullif(lo, '-infinity'), nullif(hi, 'infinity'))
        RETURNING id INTO row_id;
        PERFORM set_config('wattledger.change_log_' || tbl, row_id::text, true);
    ELSE
        UPDATE change_log
        SET start_at = CASE WHEN start_at IS NULL OR lo = '-infinity' THEN NULL ELSE least(start_at, lo) END,
            end_at = CASE WHEN end_at IS NULL OR hi = 'infinity' THEN NULL ELSE greatest(end_at, hi) END
        WHERE id = row_id;
    END IF;
END $$""",
    # The span of jobs' lives: the job and all its allocations (an open one: to infinity). A
    # statement reads all of a job's allocations and work reports when the job ran in its month.
    "wl_job_span(ids bigint[], OUT lo timestamptz, OUT hi timestamptz)": """LANGUAGE sql STABLE AS $$
SELECT min(s), max(e) FROM (
    SELECT started_at AS s, coalesce(ended_at, 'infinity') AS e FROM job WHERE id = ANY(ids)
    UNION ALL
    SELECT start_at, coalesce(end_at, 'infinity') FROM allocation WHERE job_id = ANY(ids)) spans $$""",
    "wl_change_by_hour()": """RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE lo timestamptz; hi timestamptz; olo timestamptz; ohi timestamptz;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT min(hour), max(hour) INTO lo, hi FROM new_rows;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT min(hour), max(hour) INTO olo, ohi FROM old_rows;
        lo := least(lo, olo); hi := greatest(hi, ohi);
    END IF;
    PERFORM wl_note_change(TG_TABLE_NAME, lo, hi + interval '1 hour');  -- a row is its whole hour
    RETURN NULL;
END $$""",
    "wl_change_of_job()": _job_life_trigger("id", "started_at", "coalesce(ended_at, 'infinity')"),
    "wl_change_of_allocation()": _job_life_trigger("job_id", "start_at", "coalesce(end_at, 'infinity')"),
    "wl_change_of_work_report()": _job_life_trigger("job_id", "at", "at"),
    # A GPU's site, model, parent and MIG slices are read, for all time. A new GPU has no ledger
    # rows yet and changes nothing; an UPDATE that leaves those columns alone (last_seen_at, a
    # lock) logs nothing.
    "wl_change_of_gpu()": """RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM wl_note_change(TG_TABLE_NAME, '-infinity', 'infinity');
    ELSIF TG_OP = 'UPDATE' THEN  -- apart: an expression naming new_rows is planned whole
        IF EXISTS (SELECT id, site_id, model, parent_id, mig_slices FROM new_rows
                   EXCEPT SELECT id, site_id, model, parent_id, mig_slices FROM old_rows) THEN
            PERFORM wl_note_change(TG_TABLE_NAME, '-infinity', 'infinity');
        END IF;
    END IF;
    RETURN NULL;
END $$""",
    "wl_change_unbounded()": """RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wl_note_change(TG_TABLE_NAME, '-infinity', 'infinity');
    RETURN NULL;
END $$""",
}


def _create_triggers() -> None:
    for signature, body in FUNCTIONS.items():
        op.execute(f"CREATE OR REPLACE FUNCTION {signature} {body}")
    for table, function in SPANS.items():
        # A trigger with transition tables takes one event (PostgreSQL ≥ 10).
        for event, tables in (("INSERT", "NEW TABLE AS new_rows"), ("DELETE", "OLD TABLE AS old_rows"),
                              ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows")):
            op.execute(f"CREATE TRIGGER wl_change_{table}_{event.lower()} AFTER {event} ON {table} "
                       f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
    for table in UNBOUNDED:
        op.execute(f"CREATE TRIGGER wl_change_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION wl_change_unbounded()")
    for table in (*SPANS, *UNBOUNDED):  # TRUNCATE has no transition tables: it touches all time
        op.execute(f"CREATE TRIGGER wl_change_{table}_truncate AFTER TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION wl_change_unbounded()")


def _drop_triggers() -> None:
    for table in SPANS:
        for event in ("insert", "update", "delete", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS wl_change_{table}_{event} ON {table}")
    for table in UNBOUNDED:
        op.execute(f"DROP TRIGGER IF EXISTS wl_change_{table} ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS wl_change_{table}_truncate ON {table}")
    for signature in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION IF EXISTS {signature.split('(')[0]}")


def _sample_columns(key: list[sa.Column] | None = None) -> list:
    return [
        sa.Column('gpu_id', sa.Integer(), nullable=False),
        sa.Column('start_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('end_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('energy_mj', sa.BigInteger(), nullable=False),
        sa.Column('method', sa.String(length=32), nullable=False),
        sa.Column('power_mw', sa.BigInteger(), nullable=True),
        sa.Column('gpu_util_pct', sa.Integer(), nullable=True),
        sa.Column('memory_util_pct', sa.Integer(), nullable=True),
        sa.Column('memory_used_bytes', sa.BigInteger(), nullable=True),
        sa.Column('sm_clock_mhz', sa.Integer(), nullable=True),
        sa.Column('processes', sa.JSON(), nullable=True),
        sa.Column('mig', sa.JSON(), nullable=True),
        sa.Column('sm_active_pct', sa.Float(), nullable=True),
        sa.Column('tensor_active_pct', sa.Float(), nullable=True),
        sa.Column('dram_bw_pct', sa.Float(), nullable=True),
        *(key or []),
        sa.ForeignKeyConstraint(['gpu_id'], ['gpu.id']),
    ]


def _day_partitions(first: datetime | None) -> list[datetime]:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = min(first.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0), today) if first else today
    days = []
    while day <= today + timedelta(days=7):
        days.append(day)
        day += timedelta(days=1)
    return days


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.drop_index('ix_sample_end_at', table_name='sample')
    op.rename_table('sample', 'sample_unpartitioned')
    if postgres:
        op.execute("ALTER TABLE sample_unpartitioned RENAME CONSTRAINT sample_pkey TO sample_unpartitioned_pkey")
        op.execute("ALTER TABLE sample_unpartitioned DROP CONSTRAINT uq_sample_gpu_start")
    op.create_table('sample', *_sample_columns([sa.PrimaryKeyConstraint('gpu_id', 'start_at')]),
                    postgresql_partition_by='RANGE (start_at)')
    op.create_index('ix_sample_end_at', 'sample', ['end_at'], unique=False)
    if postgres:
        first = op.get_bind().execute(sa.text("SELECT min(start_at) FROM sample_unpartitioned")).scalar()
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        op.execute(f"CREATE TABLE {SCHEMA}.sample_default PARTITION OF sample DEFAULT")
        for day in _day_partitions(first):
            op.execute(f"CREATE TABLE {SCHEMA}.sample_p{day:%Y%m%d} PARTITION OF sample "
                       f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')")
    names = ", ".join(f'"{c}"' for c in COLUMNS)
    op.execute(f"INSERT INTO sample ({names}) SELECT {names} FROM sample_unpartitioned")
    op.drop_table('sample_unpartitioned')

    op.create_table('change_log',
                    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
                    sa.Column('txid', sa.BigInteger(), nullable=False),
                    sa.Column('table_name', sa.String(length=64), nullable=False),
                    sa.Column('logged_at', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('start_at', sa.DateTime(timezone=True), nullable=True),
                    sa.Column('end_at', sa.DateTime(timezone=True), nullable=True),
                    sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_change_log_txid', 'change_log', ['txid'], unique=False)
    op.create_index('ix_change_log_logged_at', 'change_log', ['logged_at'], unique=False)
    if postgres:
        _create_triggers()


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        _drop_triggers()
    op.drop_index('ix_change_log_logged_at', table_name='change_log')
    op.drop_index('ix_change_log_txid', table_name='change_log')
    op.drop_table('change_log')

    op.drop_index('ix_sample_end_at', table_name='sample')
    op.rename_table('sample', 'sample_partitioned')
    if postgres:
        op.execute("ALTER TABLE sample_partitioned RENAME CONSTRAINT sample_pkey TO sample_partitioned_pkey")
    op.create_table('sample', sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
                    *_sample_columns([sa.PrimaryKeyConstraint('id'),
                                      sa.UniqueConstraint('gpu_id', 'start_at', name='uq_sample_gpu_start')]))
    op.create_index('ix_sample_end_at', 'sample', ['end_at'], unique=False)
    names = ", ".join(f'"{c}"' for c in COLUMNS)
    op.execute(f"INSERT INTO sample ({names}) SELECT {names} FROM sample_partitioned ORDER BY start_at, gpu_id")
    op.drop_table('sample_partitioned')  # its partitions go with it
    if postgres:
        op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA}")
