-- ledger_status: the latest ledger status of every (kind, date) of the ingest ledger, whatever it was (ok, noop,
-- failed, source_missing, retracted); ingest flags or retracts a date whose landing files vanished only once.
-- grain: one row per (kind, dt).
-- reads: ingest_ledger. parameters: none. Portable: runs on DuckDB and PostgreSQL (pipeline/warehouse.py).
with ranked as (
    select
        kind,
        dt,
        status,
        ingested_at,
        max(ingested_at) over (partition by kind, dt) as latest_at
    from ingest_ledger
),

latest as (
    select kind, dt, status
    from ranked
    where ingested_at = latest_at
),

final as (
    select distinct
        cast(kind as varchar) as kind,
        cast(dt as date) as dt,
        cast(status as varchar) as status
    from latest
    order by kind, dt
)

select * from final
