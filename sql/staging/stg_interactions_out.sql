-- stg_interactions_out: the lake's interactions partition for one data date, in a stable order.
-- grain: one row per accepted, deduplicated event (event_id).
-- reads: kept (from stg_events_dedup). parameters: $dt (data date), $ingested_at.
with kept_events as (
    select * from kept
),

final as (
    select
        cast(event_id as varchar) as event_id,
        cast(user_id as varchar) as user_id,
        cast(item_id as varchar) as item_id,
        cast(event_type as varchar) as event_type,
        cast(value as double) as value,
        cast(event_ts as timestamptz) as event_ts,
        cast($dt as date) as dt,
        cast(source_file as varchar) as source_file,
        cast(line_no as bigint) as line_no,
        cast($ingested_at as timestamptz) as ingested_at
    from kept_events
    order by event_ts, source_file, line_no
)

select * from final
