-- import_items_movielens: the MovieLens catalog (title, '|'-separated genres) with user tags.
-- Layouts: movies.csv (header, comma, quoted titles) or movies.dat ('::', no header, Latin-1).
-- grain: one row per movie (item_id).
-- reads: item_tags(item_id, tags) (from item_tags_movielens, or item_tags_none).
-- parameters: $path, $delim, $header (boolean), $quote (quote and escape: '"' or '' for none), $encoding.
with movies as (
    select *
    from read_csv($path, delim = $delim, header = $header, quote = $quote, escape = $quote, encoding = $encoding,
                  columns = {'item_id': 'VARCHAR', 'title': 'VARCHAR', 'genres': 'VARCHAR'})
),

final as (
    select
        cast(trim(m.item_id) as varchar) as item_id,
        cast(trim(m.title) as varchar) as title,
        cast('' as varchar) as description,
        cast(list_filter(string_split(m.genres, '|'), lambda g: g <> '' and g <> '(no genres listed)')
            as varchar[]) as genres,
        cast(coalesce(t.tags, []) as varchar[]) as tags,
        cast('' as varchar) as brand,
        cast([] as varchar[]) as categories
    from movies as m
    left join item_tags as t on trim(m.item_id) = t.item_id
)

select * from final
