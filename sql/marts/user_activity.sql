-- user_activity: activity per user and whether the user is active (gets recommendations) on the run date.
-- grain: one row per user_id.
-- reads: int_user_events.
-- parameters: $run_date (date), $active_days (a user with an event in the last N UTC days up to it is active).
with events as (
    select user_id, event_ts, event_date from int_user_events
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(count(*) as bigint) as n_events,
        cast(count(distinct event_date) as bigint) as n_active_days,
        cast(min(event_ts) as timestamptz) as first_event_ts,
        cast(max(event_ts) as timestamptz) as last_event_ts,
        cast(max(event_date) > cast($run_date as date) - $active_days as boolean) as is_active
    from events
    group by user_id
    order by user_id
)

select * from final
