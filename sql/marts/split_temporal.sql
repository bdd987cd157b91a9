-- split_temporal: the evaluation side of a temporal holdout: each user's history before $split_date and the
--                 items they interacted with on it (UTC days). Train on split_temporal_train, evaluate here.
-- grain: one row per user_id with at least one event before and one event on $split_date.
-- reads: int_user_events. parameters: $split_date (date), $max_history (most recent history events kept).
-- target_item is the user's first item on $split_date (next-item protocol); target_items all of them, in order.
with before_split as (
    select * from int_user_events where event_date < cast($split_date as date)
),

on_split as (
    select * from int_user_events where event_date = cast($split_date as date)
),

histories as (
    select
        user_id,
        list(item_id order by position) as items
    from before_split
    group by user_id
),

targets as (
    select
        user_id,
        list(item_id order by position) as items
    from on_split
    group by user_id
),

final as (
    select
        cast(h.user_id as varchar) as user_id,
        cast(h.items[greatest(1, len(h.items) - $max_history + 1):] as varchar[]) as history_items,
        cast(t.items[1] as varchar) as target_item,
        cast(t.items as varchar[]) as target_items
    from histories as h
    inner join targets as t on h.user_id = t.user_id
    order by h.user_id
)

select * from final
