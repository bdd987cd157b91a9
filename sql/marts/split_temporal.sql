-- split_temporal: a temporal holdout: history before $split_date, target = the user's first item on it.
-- grain: one row per user_id with at least one event before and one event on $split_date.
-- reads: int_user_events. parameters: $split_date (date), $max_history (events of history kept).
with before_split as (
    select * from int_user_events where cast(event_ts as date) < cast($split_date as date)
),

on_split as (
    select user_id, item_id, position
    from int_user_events
    where cast(event_ts as date) = cast($split_date as date)
    qualify row_number() over (partition by user_id order by position) = 1
),

histories as (
    select user_id, list(item_id order by position) as items
    from before_split
    group by user_id
),

final as (
    select
        cast(h.user_id as varchar) as user_id,
        cast(h.items[greatest(1, len(h.items) - $max_history + 1):] as varchar[]) as history_items,
        cast(s.item_id as varchar) as target_item
    from histories as h
    inner join on_split as s on h.user_id = s.user_id
    order by h.user_id
)

select * from final
