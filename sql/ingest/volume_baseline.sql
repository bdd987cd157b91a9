-- volume_baseline: the data date's accepted rows of one kind against the trailing baseline of the ingest ledger
-- (the median of the accepted rows per date over the $days dates before it, counting only dates whose latest
-- ledger entry is a successful ingest: ok or noop).
-- grain: one row.
-- Portable: runs on DuckDB and PostgreSQL (pipeline/warehouse.py).
-- reads: ingest_ledger. parameters: $kind ('events' | 'items'), $data_date, $days (length of the baseline).
with window_rows as (
    select
        dt,
        accepted,
        status,
        ingested_at,
        max(ingested_at) over (partition by dt) as latest_at
    from ingest_ledger
    where kind = $kind and dt between cast($data_date as date) - cast($days as integer) and cast($data_date as date)
),

latest as (
    select dt, accepted, status
    from window_rows
    where ingested_at = latest_at
),

per_date as (
    select dt, sum(accepted) as accepted
    from latest
    where status in ('ok', 'noop')
    group by dt
),

final as (
    select
        cast(coalesce(sum(accepted) filter (where dt = cast($data_date as date)), 0) as bigint) as accepted,
        cast(
            percentile_cont(0.5) within group (order by accepted) filter (where dt < cast($data_date as date))
            as double precision
        ) as baseline_median,
        cast(count(*) filter (where dt < cast($data_date as date)) as integer) as baseline_dates
    from per_date
)

select * from final
