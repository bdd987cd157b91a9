-- split_temporal: the evaluation side of the temporal holdout (the gate's split): each user's history before
--                 $split_date, every item they had seen before it, and the new items they interacted with on it
--                 (UTC days). Train on split_temporal_train, evaluate here.
-- grain: one row per user_id with at least one event before $split_date and at least one item on $split_date
--        they had not seen before it (an item seen before is removed from the ranking, so it cannot be a target).
-- reads: int_user_events. parameters: $split_date (date), $max_history (most recent history events kept).
-- target_items: the distinct new items of $split_date, in order of first interaction; target_item the first.
-- seen_items: every distinct item before $split_date (not cut to $max_history): excluded from the ranking.
with before_split as (
    select * from int_user_events where event_date < cast($split_date as date)
),

on_split as (
    select * from int_user_events where event_date = cast($split_date as date)
),

histories as (
    select
        user_id,
        list(item_id order by position) as items,
        list(distinct item_id order by item_id) as seen
    from before_split
    group by user_id
),

new_on_split as (
    select
        o.user_id,
        o.item_id,
        min(o.position) as first_position
    from on_split as o
    anti join before_split as b on o.user_id = b.user_id and o.item_id = b.item_id
    group by o.user_id, o.item_id
),

targets as (
    select
        user_id,
        list(item_id order by first_position) as items
    from new_on_split
    group by user_id
),

final as (
    select
        cast(h.user_id as varchar) as user_id,
        cast(h.items[greatest(1, len(h.items) - $max_history + 1):] as varchar[]) as history_items,
        cast(h.seen as varchar[]) as seen_items,
        cast(t.items[1] as varchar) as target_item,
        cast(t.items as varchar[]) as target_items
    from histories as h
    inner join targets as t on h.user_id = t.user_id
    order by h.user_id
)

select * from final
