-- known_items: every item id of the lake's catalog with the first drop date it appeared on; events whose
-- item is not known as of their date are kept and counted as unknown_items.
-- grain: one row per item_id.
-- reads: lake_items (a snapshot of the lake's items table, registered by pipeline.lake). parameters: none.
with versions as (
    select item_id, dt
    from lake_items
),

final as (
    select
        cast(item_id as varchar) as item_id,
        cast(min(cast(dt as date)) as date) as first_dt
    from versions
    group by item_id
)

select * from final
