-- stg_lake_items: every catalog version dropped up to the run date, from the lake.
-- grain: one row per (item_id, dt).
-- reads: lake_items (a snapshot of the lake table, registered by pipeline.lake).
-- parameters: $run_date (date, inclusive).
-- removed: the optional boolean `removed` of a version (true: the item is discontinued as of that version);
--          read through the row's JSON so that a table without the column reads as null (not removed).
with source as (
    select * from lake_items
),

final as (
    select
        cast(item_id as varchar) as item_id,
        cast(title as varchar) as title,
        cast(description as varchar) as description,
        cast(brand as varchar) as brand,
        cast(genres as varchar[]) as genres,
        cast(categories as varchar[]) as categories,
        cast(tags as varchar[]) as tags,
        cast(updated_at as timestamptz) as updated_at,
        cast(try_cast(to_json(source) ->> 'removed' as boolean) as boolean) as removed,
        cast(dt as date) as dt
    from source
    where cast(dt as date) <= cast($run_date as date)
)

select * from final
