-- stg_items_out: the lake's items partition for one drop date (one row per item version).
-- grain: one row per item_id.
-- reads: kept (from stg_items_dedup). parameters: $dt (drop date), $ingested_at.
with kept_items as (
    select * from kept
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
        cast(coalesce(updated_at, cast($dt as timestamptz)) as timestamptz) as updated_at,
        cast($dt as date) as dt,
        cast(source_file as varchar) as source_file,
        cast($ingested_at as timestamptz) as ingested_at
    from kept_items
    order by item_id
)

select * from final
