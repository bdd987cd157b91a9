-- item_tags_movielens: free-text user tags per movie, most frequent first (ties by tag).
-- Layouts: tags.csv (header, comma, quoted) or tags.dat ('::', no header).
-- grain: one row per movie with tags (item_id).
-- parameters: $path, $delim, $header (boolean), $quote ('"' or ''), $encoding.
with tags as (
    select trim(item_id) as item_id, lower(trim(tag)) as tag
    from read_csv($path, delim = $delim, header = $header, quote = $quote, escape = $quote, encoding = $encoding,
                  columns = {'user_id': 'VARCHAR', 'item_id': 'VARCHAR', 'tag': 'VARCHAR', 'ts': 'VARCHAR'})
    where trim(coalesce(tag, '')) <> ''
),

counted as (
    select item_id, tag, count(*) as n
    from tags
    group by item_id, tag
),

final as (
    select
        cast(item_id as varchar) as item_id,
        cast(list(tag order by n desc, tag) as varchar[]) as tags
    from counted
    group by item_id
)

select * from final
