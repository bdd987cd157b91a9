-- stg_lake_interactions: the accepted interactions of every data date up to the run date, from the lake.
-- grain: one row per event_id (partitions are deduplicated per date; a replayed event on another date is
--        dropped here, the earliest date wins).
-- reads: lake_interactions (a snapshot of the lake table, registered by pipeline.lake).
-- parameters: $run_date (date, inclusive).
with source as (
    select * from lake_interactions
),

renamed as (
    select
        cast(event_id as varchar) as event_id,
        cast(user_id as varchar) as user_id,
        cast(item_id as varchar) as item_id,
        cast(event_type as varchar) as event_type,
        cast(value as double) as value,
        cast(event_ts as timestamptz) as event_ts,
        cast(dt as date) as dt,
        cast(source_file as varchar) as source_file,
        cast(line_no as bigint) as line_no
    from source
    where cast(dt as date) <= cast($run_date as date)
),

final as (
    select * from renamed
    qualify row_number() over (partition by event_id order by dt, source_file, line_no) = 1
)

select * from final
