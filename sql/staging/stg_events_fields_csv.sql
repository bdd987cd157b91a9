-- stg_events_fields_csv: split decoded CSV lines into the pipeline's event fields (as text) for stg_events.
-- A record is one line; '"' quotes a field ("" is a literal quote); quoted fields cannot span lines.
-- grain: one row per data line (file_no, line_no); nothing is filtered, unparsable lines get a parse_error.
-- reads: ingest_lines (from stg_ingest_lines); ingest_files (per file: n_columns and the 1-based position of
--        each mapped field in its header, null when absent).
-- parameters: $delimiter, $record_pattern (a well-quoted record), $field_pattern (one field and its delimiter).
with lines as (
    select
        l.*,
        f.n_columns,
        f.user_id_pos,
        f.item_id_pos,
        f.event_type_pos,
        f.value_pos,
        f.timestamp_pos,
        replace(replace(l.text, chr(10), ''), chr(13), '') as record
    from ingest_lines as l
    inner join ingest_files as f on l.file_no = f.file_no
),

split as (
    select
        *,
        case
            when line_error is not null then line_error
            when contains(record, '"') and not regexp_full_match(record, $record_pattern) then 'broken_quoting'
        end as quoting_error
    from lines
),

fields as (
    select
        *,
        case
            when quoting_error is not null then null
            when contains(record, '"') then list_transform(
                regexp_extract_all(record || $delimiter, $field_pattern, 1),
                lambda f: case when starts_with(f, '"') then replace(f[2:-2], '""', '"') else f end
            )
            else string_split(record, $delimiter)
        end as fields
    from split
),

final as (
    select
        file_no,
        line_no,
        dt,
        raw,
        record as text,
        case
            when quoting_error is null and len(fields) <> n_columns then 'wrong_column_count'
            else quoting_error
        end as parse_error,
        fields[user_id_pos] as user_id,
        fields[item_id_pos] as item_id,
        fields[event_type_pos] as event_type,
        fields[value_pos] as value_raw,
        fields[timestamp_pos] as ts_raw
    from fields
)

select * from final
