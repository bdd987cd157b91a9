-- item_tags_none: an empty item_tags relation, for catalogs without a tags file.
-- grain: one row per item with tags (none). parameters: none.
with final as (
    select
        cast(null as varchar) as item_id,
        cast([] as varchar[]) as tags
    where false
)

select * from final
