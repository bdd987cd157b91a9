-- landing_events: imported events as landing JSONL lines (default column names, ISO-8601 UTC
-- timestamps), with the day of the file each belongs to, in a stable order.
-- grain: one row per event.
-- reads: import_events(user_id, item_id, event_type, value, event_ts). parameters: none.
with events as (
    select * from import_events
),

final as (
    select
        cast(event_ts as date) as day,
        cast(to_json(struct_pack(
            user_id := user_id,
            item_id := item_id,
            event_type := event_type,
            value := value,
            timestamp := strftime(event_ts, '%Y-%m-%dT%H:%M:%SZ')
        )) || chr(10) as varchar) as line
    from events
    order by event_ts, user_id, item_id, event_type, value
)

select * from final
