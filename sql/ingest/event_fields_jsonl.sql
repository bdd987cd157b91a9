-- event_fields_jsonl: split strict JSONL lines into the pipeline's event fields (as text) for staged_events.
-- Ids must be JSON strings or numbers: an object, array or boolean id is invalid_id_type.
-- grain: one row per source line (file_no, line_no); nothing is filtered, unparsable lines get a parse_error.
-- reads: json_lines (from json_lines.sql).
-- parameters: $paths (JSON paths of the mapped source fields), $user_id_idx, $item_id_idx, $event_type_idx,
--             $value_idx, $timestamp_idx (1-based positions in $paths; null when the field is not mapped).
with lines as (
    select * from json_lines
),

extracted as (
    select
        *,
        case when parse_error is null then json_extract(text, $paths) end as v
    from lines
),

typed as (
    select
        *,
        case
            when parse_error is not null then parse_error
            when coalesce(json_type(v[$user_id_idx]), 'NULL') not in ('VARCHAR', 'BIGINT', 'UBIGINT', 'DOUBLE', 'NULL')
                or coalesce(json_type(v[$item_id_idx]), 'NULL') not in ('VARCHAR', 'BIGINT', 'UBIGINT', 'DOUBLE', 'NULL')
                then 'invalid_id_type'
        end as field_error
    from extracted
),

final as (
    select
        file_no,
        line_no,
        dt,
        raw,
        text,
        field_error as parse_error,
        v[$user_id_idx] ->> '$' as user_id,
        v[$item_id_idx] ->> '$' as item_id,
        v[$event_type_idx] ->> '$' as event_type,
        v[$value_idx] ->> '$' as value_raw,
        v[$timestamp_idx] ->> '$' as ts_raw
    from typed
)

select * from final
