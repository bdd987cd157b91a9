-- split_temporal_train: the training side of the temporal holdout: every user's most recent items before
--                       $split_date (UTC days), oldest first. Nothing on or after $split_date leaks in.
-- grain: one row per user_id with at least one event before $split_date.
-- reads: int_user_events. parameters: $split_date (date), $max_history (most recent events kept per user).
with before_split as (
    select
        *,
        count(*) over (partition by user_id) as n_before
    from int_user_events
    where event_date < cast($split_date as date)
),

recent as (
    select * from before_split
    qualify row_number() over (partition by user_id order by position desc) <= $max_history
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(list(item_id order by position) as varchar[]) as item_ids,
        cast(max(n_before) as bigint) as n_events,
        cast(max(event_ts) as timestamptz) as last_event_ts
    from recent
    group by user_id
    order by user_id
)

select * from final
