-- landing_items: an imported catalog as landing JSONL lines, ordered by item_id.
-- grain: one row per item.
-- reads: import_items(item_id, title, description, genres, tags, brand, categories). parameters: none.
with items as (
    select * from import_items
),

final as (
    select
        cast(to_json(struct_pack(
            item_id := item_id,
            title := title,
            description := description,
            genres := genres,
            tags := tags,
            brand := brand,
            categories := categories
        )) || chr(10) as varchar) as line
    from items
    order by item_id
)

select * from final
