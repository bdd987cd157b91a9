-- stg_items_jsonl: parse and validate one batch of raw catalog JSONL lines.
-- grain: one row per source line (line_no); reason is null for accepted rows, else why it is quarantined.
-- reads: raw_lines(line_no bigint, raw blob), registered by the ingest stage.
-- parameters: $source_file (landing file name), $max_raw_chars (bound on raw text kept for quarantine), $max_field_chars (bound on item_id).
with lines as (
    select line_no, raw, try(decode(raw)) as text
    from raw_lines
),

checked as (
    select
        line_no,
        raw,
        text,
        case
            when text is null then 'invalid_utf8'
            when contains(text, chr(0)) then 'nul_byte'
            when not json_valid(text) then 'broken_json'
            when json_type(text) <> 'OBJECT' then 'not_a_json_object'
        end as parse_error
    from lines
),

fields as (
    select
        line_no,
        cast(left(coalesce(text, cast(raw as varchar)), $max_raw_chars) as varchar) as raw_text,
        parse_error,
        case when parse_error is null then trim(json_extract_string(text, '$.item_id')) end as item_id,
        case when parse_error is null then json_extract_string(text, '$.title') end as title,
        case when parse_error is null then json_extract_string(text, '$.description') end as description,
        case when parse_error is null then json_extract_string(text, '$.brand') end as brand,
        case when parse_error is null then json_extract_string(text, '$.genres') end as genres_json,
        case when parse_error is null then json_extract_string(text, '$.categories') end as categories_json,
        case when parse_error is null then json_extract_string(text, '$.tags') end as tags_json,
        case when parse_error is null then json_extract_string(text, '$.updated_at') end as updated_raw
    from checked
),

final as (
    select
        line_no,
        raw_text,
        case
            when parse_error is not null then parse_error
            when item_id is null or item_id = '' then 'missing_item_id'
            when length(item_id) > $max_field_chars then 'field_too_long'
            when coalesce(title, '') = '' and coalesce(description, '') = '' then 'missing_text'
        end as reason,
        item_id,
        cast(coalesce(title, '') as varchar) as title,
        cast(coalesce(description, '') as varchar) as description,
        cast(coalesce(brand, '') as varchar) as brand,
        cast(coalesce(try_cast(genres_json as varchar[]), []) as varchar[]) as genres,
        cast(coalesce(try_cast(categories_json as varchar[]), []) as varchar[]) as categories,
        cast(coalesce(try_cast(tags_json as varchar[]), []) as varchar[]) as tags,
        cast(try_cast(updated_raw as timestamptz) as timestamptz) as updated_at,
        cast($source_file as varchar) as source_file
    from fields
)

select * from final
