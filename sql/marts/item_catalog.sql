-- item_catalog: the current catalog as of the run date: the latest version of every item.
-- grain: one row per item_id.
-- reads: stg_lake_items. parameters: none.
with versions as (
    select * from stg_lake_items
),

latest as (
    select *
    from versions
    qualify row_number() over (partition by item_id order by dt desc, updated_at desc nulls last) = 1
),

first_seen as (
    select item_id, min(dt) as first_seen_dt
    from versions
    group by item_id
),

final as (
    select
        cast(l.item_id as varchar) as item_id,
        cast(l.title as varchar) as title,
        cast(l.description as varchar) as description,
        cast(l.brand as varchar) as brand,
        cast(l.genres as varchar[]) as genres,
        cast(l.categories as varchar[]) as categories,
        cast(l.tags as varchar[]) as tags,
        cast(l.updated_at as timestamptz) as updated_at,
        cast(f.first_seen_dt as date) as first_seen_dt
    from latest as l
    inner join first_seen as f on l.item_id = f.item_id
    order by l.item_id
)

select * from final
