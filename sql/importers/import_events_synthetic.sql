-- import_events_synthetic: sequences without timestamps as pipeline events ('view'): a user's item at
-- position p (0 = oldest) gets $synthetic_start + p minutes, so chronological order is kept.
-- grain: one row per (user_id, position).
-- reads: positions(user_id, item_id, position). parameters: $synthetic_start (timestamptz).
with ordered as (
    select * from positions
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(item_id as varchar) as item_id,
        cast('view' as varchar) as event_type,
        cast(null as double) as value,
        cast($synthetic_start + to_minutes(position) as timestamptz) as event_ts
    from ordered
)

select * from final
