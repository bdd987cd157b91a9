-- split_temporal_train: the training side of the temporal holdout: every user's most recent items before
--                       $split_date (UTC days), oldest first. Nothing on or after $split_date leaks in.
-- grain: one row per user_id with at least one event before $split_date.
-- reads: int_user_events. parameters: $split_date (date), $max_history (most recent events kept per user).
-- Positions follow event time, so a user's events before $split_date are positions 1..n_before: no window
-- function (and only the four columns used) keeps the memory of a large history small. event_days (each
-- item's UTC day) lets an incremental night train only on what came after the champion's window.
with before_split as (
    select user_id, item_id, position, event_ts, event_date
    from int_user_events
    where event_date < cast($split_date as date)
),

counts as (
    select user_id, max(position) as n_before
    from before_split
    group by user_id
),

recent as (
    select
        b.user_id,
        b.item_id,
        b.position,
        b.event_ts,
        b.event_date,
        c.n_before
    from before_split as b
    inner join counts as c on b.user_id = c.user_id
    where b.position > c.n_before - $max_history
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(list(item_id order by position) as varchar[]) as item_ids,
        cast(list(event_date order by position) as date[]) as event_days,
        cast(max(n_before) as bigint) as n_events,
        cast(max(event_ts) as timestamptz) as last_event_ts
    from recent
    group by user_id
    order by user_id
)

select * from final
