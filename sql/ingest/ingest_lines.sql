-- ingest_lines: raw landing records (JSONL lines or CSV records, events or items) decoded, with the errors found
-- before any format-specific parsing: over-long line, header without a mapped column, invalid UTF-8, NUL byte.
-- A UTF-8 byte order mark at the start of a record (files concatenated after export) is dropped.
-- grain: one row per non-blank source line (file_no, line_no); nothing is filtered.
-- reads: raw_lines(file_no, line_no, raw blob; raw keeps the record terminator), streamed by the ingest stage;
--        ingest_files(file_no, source_file, dt, missing_columns, ...), one row per landing file of the batch.
-- parameters: $max_line_bytes (longer lines are not parsed).
with lines as (
    select
        r.file_no,
        r.line_no,
        f.dt,
        f.missing_columns,
        r.raw,
        try(decode(r.raw)) as text
    from raw_lines as r
    inner join ingest_files as f on r.file_no = f.file_no
),

final as (
    select
        cast(file_no as integer) as file_no,
        cast(line_no as bigint) as line_no,
        cast(dt as date) as dt,
        raw,
        cast(ltrim(text, chr(65279)) as varchar) as text,
        case
            when octet_length(raw) > $max_line_bytes then 'line_too_long'
            when missing_columns is not null then 'missing_columns'
            when text is null then 'invalid_utf8'
            when contains(text, chr(0)) then 'nul_byte'
        end as line_error
    from lines
)

select * from final
