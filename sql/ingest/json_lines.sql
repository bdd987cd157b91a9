-- json_lines: decoded JSONL landing lines (events or items) checked as strict JSON (RFC 8259), the one place the
-- JSONL rules live. DuckDB's parser also accepts trailing commas and NaN/Infinity literals, so besides
-- json_valid the text outside string literals may hold only JSON punctuation, numbers, true/false/null and JSON
-- whitespace, with no comma right before a closing bracket. A line is one record up to \n (ingest_lines); a
-- lone CR between tokens is JSON whitespace, anywhere else it makes the line broken_json.
-- grain: one row per source line (file_no, line_no); nothing is filtered, bad lines get a parse_error.
-- reads: ingest_lines (from ingest_lines.sql). parameters: none.
with lines as (
    select * from ingest_lines
),

skeleton as (
    select
        *,
        case when line_error is null then regexp_replace(
            regexp_replace(text, '"(?:[^"\\]|\\.)*"', '""', 'g'), 'true|false|null', '', 'g'
        ) end as outside_strings
    from lines
),

final as (
    select
        file_no,
        line_no,
        dt,
        raw,
        text,
        case
            when line_error is not null then line_error
            when not json_valid(text) then 'broken_json'
            when not regexp_full_match(outside_strings, '[{}\[\]:,"0-9eE+.\- \t\r\n]*') then 'broken_json'
            when regexp_matches(outside_strings, ',[ \t\r\n]*[}\]]') then 'broken_json'
            when json_type(text) <> 'OBJECT' then 'not_a_json_object'
        end as parse_error
    from skeleton
)

select * from final
