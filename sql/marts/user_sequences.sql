-- user_sequences: each user's most recent items, oldest first, for training and scoring.
-- grain: one row per user_id. Order (ties on equal timestamps included) comes from int_user_events.position.
-- reads: int_user_events. parameters: $max_history (how many most recent events to keep per user).
with events as (
    select * from int_user_events
    where position > n_events - $max_history
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(list(item_id order by position) as varchar[]) as item_ids,
        cast(max(n_events) as bigint) as n_events,
        cast(max(event_ts) as timestamptz) as last_event_ts
    from events
    group by user_id
    order by user_id
)

select * from final
