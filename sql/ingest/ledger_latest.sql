-- ledger_latest: the per-file counts of the latest successful ingest (ok or noop) of every
-- (kind, date), from the warehouse ledger; ingest compares checksums with it to skip unchanged dates.
-- grain: one row per (kind, dt, source_file).
-- reads: ingest_ledger. parameters: none. Portable: runs on DuckDB and PostgreSQL (pipeline/warehouse.py).
with successful as (
    select
        *,
        max(ingested_at) over (partition by kind, dt) as latest_at
    from ingest_ledger
    where status in ('ok', 'noop')
),

latest as (
    select *
    from successful
    where ingested_at = latest_at
),

final as (
    select
        cast(kind as varchar) as kind,
        cast(dt as date) as dt,
        cast(source_file as varchar) as source_file,
        cast(checksum as varchar) as checksum,
        cast(rows_read as bigint) as rows_read,
        cast(accepted as bigint) as accepted,
        cast(quarantined as bigint) as quarantined,
        cast(duplicates as bigint) as duplicates,
        cast(coalesce(unknown_items, 0) as bigint) as unknown_items,
        cast(coalesce(forgotten, 0) as bigint) as forgotten
    from latest
    order by kind, dt, source_file
)

select * from final
