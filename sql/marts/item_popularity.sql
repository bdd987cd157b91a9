-- item_popularity: interaction counts per item over all time and the last 7 and 30 days of the run date.
-- grain: one row per item_id with at least one interaction.
-- reads: stg_lake_interactions. parameters: $run_date (date; windows end at its end).
with events as (
    select item_id, user_id, cast(event_ts as date) as event_date from stg_lake_interactions
),

final as (
    select
        cast(item_id as varchar) as item_id,
        cast(count(*) as bigint) as events_all,
        cast(count(*) filter (where event_date > cast($run_date as date) - 7) as bigint) as events_7d,
        cast(count(*) filter (where event_date > cast($run_date as date) - 30) as bigint) as events_30d,
        cast(count(distinct user_id) as bigint) as users_all
    from events
    group by item_id
    order by item_id
)

select * from final
