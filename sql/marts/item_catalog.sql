-- item_catalog: the current catalog as of the run date: the latest version of every item, with the text to embed.
-- grain: one row per item_id.
-- reads: stg_lake_items.
-- parameters: $text_template_parts (varchar[]: the text template split into literals and field placeholders
--             such as '{title}', see pipeline.features.template_parts).
-- is_removed: the latest version says `removed = true`: the item stays in the catalog (its history trains the
--             model) but is never recommended (scoring and publishing validation leave it out).
-- text: the template filled from the item's fields (lists joined with ', ', missing fields empty), then split
--       on '. ', empty parts dropped and the rest joined again, so missing fields leave no stray separators.
with versions as (
    select * from stg_lake_items
),

latest as (
    select *
    from versions
    qualify row_number() over (partition by item_id order by dt desc, updated_at desc nulls last) = 1
),

first_seen as (
    select
        item_id,
        min(dt) as first_seen_dt
    from versions
    group by item_id
),

rendered as (
    select
        item_id,
        array_to_string(list_transform($text_template_parts, lambda part: case part
            when '{title}' then coalesce(title, '')
            when '{description}' then coalesce(description, '')
            when '{brand}' then coalesce(brand, '')
            when '{genres}' then array_to_string(coalesce(genres, []), ', ')
            when '{categories}' then array_to_string(coalesce(categories, []), ', ')
            when '{tags}' then array_to_string(coalesce(tags, []), ', ')
            else part
        end), '') as filled
    from latest
),

texts as (
    select
        item_id,
        trim(array_to_string(
            list_transform(
                list_filter(string_split(filled, '. '), lambda part: trim(part, ' .') <> ''),
                lambda part: trim(part, ' ' || chr(9) || chr(10) || chr(13))
            ),
            '. '
        ), ' ' || chr(9) || chr(10) || chr(13)) as text
    from rendered
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
        cast(f.first_seen_dt as date) as first_seen_dt,
        cast(coalesce(l.removed, false) as boolean) as is_removed,
        cast(t.text as varchar) as text
    from latest as l
    inner join first_seen as f on l.item_id = f.item_id
    inner join texts as t on l.item_id = t.item_id
    order by l.item_id
)

select * from final
