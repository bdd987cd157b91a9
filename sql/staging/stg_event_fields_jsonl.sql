-- stg_event_fields_jsonl: split one batch of raw JSONL lines into the pipeline's event fields (as text).
-- grain: one row per source line (line_no); nothing is filtered, unparsable lines get a parse_error.
-- reads: raw_lines(line_no bigint, raw blob), registered by the ingest stage.
-- parameters: $user_path, $item_path, $event_type_path, $value_path, $ts_path (JSON paths from the
--             column mapping), $max_raw_chars (bound on the raw text kept for quarantine).
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

final as (
    select
        cast(line_no as bigint) as line_no,
        cast(left(coalesce(text, cast(raw as varchar)), $max_raw_chars) as varchar) as raw_text,
        parse_error,
        case when parse_error is null then json_extract_string(text, $user_path) end as user_id,
        case when parse_error is null then json_extract_string(text, $item_path) end as item_id,
        case when parse_error is null then json_extract_string(text, $event_type_path) end as event_type,
        case when parse_error is null then json_extract_string(text, $value_path) end as value_raw,
        case when parse_error is null then json_extract_string(text, $ts_path) end as ts_raw
    from checked
)

select * from final
