-- item_popularity: interaction counts per item over all time and over the last 7 and 30 days of the run date.
-- grain: one row per item_id with at least one interaction.
-- reads: int_user_events. parameters: $run_date (date; each window is the N UTC days ending on it, inclusive).
with events as (
    select item_id, user_id, event_date from int_user_events
),

windowed as (
    select
        *,
        event_date between cast($run_date as date) - 6 and cast($run_date as date) as in_7d,
        event_date between cast($run_date as date) - 29 and cast($run_date as date) as in_30d
    from events
),

final as (
    select
        cast(item_id as varchar) as item_id,
        cast(count(*) as bigint) as events_all,
        cast(count(*) filter (where in_7d) as bigint) as events_7d,
        cast(count(*) filter (where in_30d) as bigint) as events_30d,
        cast(count(distinct user_id) as bigint) as users_all,
        cast(count(distinct user_id) filter (where in_7d) as bigint) as users_7d,
        cast(count(distinct user_id) filter (where in_30d) as bigint) as users_30d
    from windowed
    group by item_id
    order by item_id
)

select * from final
