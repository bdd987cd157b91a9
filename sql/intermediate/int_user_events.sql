-- int_user_events: each user's events in one deterministic order, numbered oldest first (position 1..n_events).
-- grain: one row per event_id. Equal timestamps break by data date, source file, line number and finally
--        event_id, so the order is the order the source wrote the events in and is the same on every rerun.
-- reads: stg_lake_interactions. parameters: none.
with events as (
    select * from stg_lake_interactions
),

final as (
    select
        *,
        -- the UTC calendar day of the event, whatever the session's time zone
        cast(timezone('UTC', event_ts) as date) as event_date,
        cast(row_number() over (
            partition by user_id order by event_ts, dt, source_file, line_no, event_id
        ) as bigint) as position,
        cast(count(*) over (partition by user_id) as bigint) as n_events
    from events
)

select * from final
