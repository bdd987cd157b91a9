-- import_items_text: a text catalog (item_id<TAB>text per line; an optional header line starting with
-- 'item_id'), e.g. the items TSV of the 'events' format or UniSRec's *.text. The text (whitespace collapsed)
-- becomes the title; text after the first tab is kept whole.
-- grain: one row per item (the last line of an item wins).
-- parameters: $path.
with file_lines as (
    select string_split(content, chr(10)) as lines
    from read_text($path)
),

lines as (
    select unnest(lines) as line, unnest(generate_series(1, len(lines))) as line_no
    from file_lines
),

split as (
    select
        line_no,
        trim(split_part(line, chr(9), 1)) as item_id,
        trim(regexp_replace(substr(line, strpos(line, chr(9)) + 1), '\s+', ' ', 'g')) as text
    from lines
    where strpos(line, chr(9)) > 0 and not (line_no = 1 and starts_with(line, 'item_id'))
),

final as (
    select
        cast(item_id as varchar) as item_id,
        cast(text as varchar) as title,
        cast('' as varchar) as description,
        cast([] as varchar[]) as genres,
        cast([] as varchar[]) as tags,
        cast('' as varchar) as brand,
        cast([] as varchar[]) as categories
    from split
    where item_id <> '' and text <> ''
    qualify row_number() over (partition by item_id order by line_no desc) = 1
)

select * from final
