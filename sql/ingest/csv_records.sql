-- csv_records: decoded CSV landing records (events or items) split into their fields; the one place the CSV
-- dialect (RFC 4180) lives. '"' quotes a field ("" is a literal quote); a quoted field may hold the delimiter,
-- quotes and line breaks, so one record may span several lines (the reader ends a record only at a line feed
-- outside quotes). event_fields_csv / item_fields_csv pick the mapped fields by their header positions.
-- grain: one row per data record (file_no, line_no = its first line); nothing is filtered, unparsable records
-- get a parse_error.
-- reads: ingest_lines (from ingest_lines.sql); ingest_files (per file: n_columns of its header).
-- parameters: $delimiter, $record_pattern (a well-quoted record), $field_pattern (one field and its delimiter).
with lines as (
    select
        l.*,
        f.n_columns,
        rtrim(l.text, chr(13) || chr(10)) as record  -- the terminator (and blank lines after it)
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
        fields
    from fields
)

select * from final
