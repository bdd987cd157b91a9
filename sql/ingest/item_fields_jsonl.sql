-- item_fields_jsonl: split strict catalog JSONL lines into the pipeline's item fields for staged_items.
-- Attributes (genres, categories, tags) may be JSON arrays or '|'-separated strings; both become lists here.
-- item_id must be a JSON string or number: an object, array or boolean id is invalid_id_type.
-- grain: one row per source line (file_no, line_no); nothing is filtered, unparsable lines get a parse_error.
-- reads: json_lines (from json_lines.sql).
-- parameters: $paths (JSON paths of the mapped source fields), $item_id_idx, $title_idx, $description_idx,
--             $brand_idx, $genres_idx, $categories_idx, $tags_idx, $updated_at_idx, $removed_idx (1-based positions in
--             $paths; null when the field is not mapped).
with lines as (
    select * from json_lines
),

extracted as (
    select
        * exclude (parse_error),
        case when parse_error is null then json_extract(text, $paths) end as v,
        parse_error as line_error
    from lines
),

typed as (
    select
        *,
        case
            when line_error is not null then line_error
            when coalesce(json_type(v[$item_id_idx]), 'NULL') not in ('VARCHAR', 'BIGINT', 'UBIGINT', 'DOUBLE', 'NULL')
                then 'invalid_id_type'
        end as parse_error
    from extracted
),

final as (
    select
        file_no,
        line_no,
        dt,
        raw,
        text,
        parse_error,
        v[$item_id_idx] ->> '$' as item_id,
        v[$title_idx] ->> '$' as title,
        v[$description_idx] ->> '$' as description,
        v[$brand_idx] ->> '$' as brand,
        case when json_type(v[$genres_idx]) = 'ARRAY' then try_cast(v[$genres_idx] as varchar[])
            else [v[$genres_idx] ->> '$'] end as genres,
        case when json_type(v[$categories_idx]) = 'ARRAY' then try_cast(v[$categories_idx] as varchar[])
            else [v[$categories_idx] ->> '$'] end as categories,
        case when json_type(v[$tags_idx]) = 'ARRAY' then try_cast(v[$tags_idx] as varchar[])
            else [v[$tags_idx] ->> '$'] end as tags,
        v[$updated_at_idx] ->> '$' as updated_raw,
        v[$removed_idx] ->> '$' as removed_raw
    from typed
)

select * from final
