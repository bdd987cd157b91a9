-- event_fields_jsonl: split decoded JSONL lines into the pipeline's event fields (as text) for staged_events.
-- grain: one row per source line (file_no, line_no); nothing is filtered, unparsable lines get a parse_error.
-- reads: ingest_lines (from ingest_lines.sql).
-- parameters: $paths (JSON paths of the mapped source fields), $user_id_idx, $item_id_idx, $event_type_idx,
--             $value_idx, $timestamp_idx (1-based positions in $paths; null when the field is not mapped).
with lines as (
    select * from ingest_lines
),

checked as (
    select
        *,
        case
            when line_error is not null then line_error
            when not json_valid(text) then 'broken_json'
        end as json_error
    from lines
),

extracted as (
    select
        *,
        case when json_error is null then json_extract_string(text, $paths) end as v
    from checked
),

final as (
    select
        file_no,
        line_no,
        dt,
        raw,
        text,
        case
            when json_error is null and v[$user_id_idx] is null and json_type(text) <> 'OBJECT'
                then 'not_a_json_object'
            else json_error
        end as parse_error,
        v[$user_id_idx] as user_id,
        v[$item_id_idx] as item_id,
        v[$event_type_idx] as event_type,
        v[$value_idx] as value_raw,
        v[$timestamp_idx] as ts_raw
    from extracted
)

select * from final
