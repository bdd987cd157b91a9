-- known_items: every item id of the lake's catalog with the first drop date it appeared on; events whose
-- item is not known as of their date are kept and counted as unknown_items.
-- grain: one row per item_id.
-- parameters: $items_glob (the Parquet files of lake/items).
with versions as (
    select item_id, dt
    from read_parquet($items_glob, hive_partitioning = true, union_by_name = true)
),

final as (
    select
        cast(item_id as varchar) as item_id,
        cast(min(cast(dt as date)) as date) as first_dt
    from versions
    group by item_id
)

select * from final
