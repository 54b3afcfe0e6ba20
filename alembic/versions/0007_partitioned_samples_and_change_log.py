"""Raw samples keyed by (GPU, start) and, on PostgreSQL, range-partitioned by day; the change log
that invalidates cached chargeback statements

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 11:40:00

PostgreSQL: `sample` becomes `PARTITION BY RANGE (start_at)`, with a DEFAULT partition and one
partition per UTC day (from the first stored sample's day to a week ahead) in the schema
`sample_partitions`, out of the default schema that Alembic compares with the models. The
existing rows are copied over. Statement-level triggers log, once per transaction and table,
the transactions that change what a chargeback statement reads. SQLite: the plain table with
the new key; no triggers (statements are not cached there).
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
WATCHED = ("ledger_entry", "job", "allocation", "work_report", "gpu", "site", "tariff", "price_point",
           "carbon_intensity", "embodied_carbon", "statement")
COLUMNS = ("gpu_id", "start_at", "end_at", "energy_mj", "method", "power_mw", "gpu_util_pct", "memory_util_pct",
           "memory_used_bytes", "sm_clock_mhz", "processes", "mig", "sm_active_pct", "tensor_active_pct",
           "dram_bw_pct")
LOG_CHANGE = """
CREATE OR REPLACE FUNCTION wl_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- once per transaction and table: the flag is transaction-local (and undone with a savepoint)
    IF current_setting('wattledger.changed_' || TG_TABLE_NAME, true) IS DISTINCT FROM '1' THEN
        INSERT INTO change_log (txid, table_name, logged_at)
        VALUES (pg_current_xact_id()::text::bigint, TG_TABLE_NAME, now());
        PERFORM set_config('wattledger.changed_' || TG_TABLE_NAME, '1', true);
    END IF;
    RETURN NULL;
END $$"""


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
                    sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_change_log_txid', 'change_log', ['txid'], unique=False)
    op.create_index('ix_change_log_logged_at', 'change_log', ['logged_at'], unique=False)
    if postgres:
        op.execute(LOG_CHANGE)
        for table in WATCHED:
            op.execute(f"CREATE TRIGGER wl_change_{table} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION wl_log_change()")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for table in WATCHED:
            op.execute(f"DROP TRIGGER IF EXISTS wl_change_{table} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS wl_log_change()")
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
