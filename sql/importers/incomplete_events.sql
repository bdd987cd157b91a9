-- incomplete_events: how many imported events lack a user, an item or a readable timestamp (the
-- importer refuses such datasets rather than writing rows that cannot be placed in a daily file).
-- grain: one row.
-- reads: import_events. parameters: none.
with events as (
    select * from import_events
),

final as (
    select cast(count(*) as bigint) as incomplete
    from events
    where coalesce(user_id, '') = '' or coalesce(item_id, '') = '' or event_ts is null
)

select * from final
