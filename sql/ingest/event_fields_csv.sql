-- event_fields_csv: the pipeline's event fields (as text) of CSV landing lines, for staged_events.
-- grain: one row per data line (file_no, line_no); nothing is filtered.
-- reads: csv_records (from csv_records.sql); ingest_files (per file: the 1-based position of each mapped field
--        in its header, null when absent).
-- parameters: none.
with records as (
    select
        r.*,
        f.user_id_pos,
        f.item_id_pos,
        f.event_type_pos,
        f.value_pos,
        f.timestamp_pos
    from csv_records as r
    inner join ingest_files as f on r.file_no = f.file_no
),

final as (
    select
        file_no,
        line_no,
        dt,
        raw,
        text,
        parse_error,
        fields[user_id_pos] as user_id,
        fields[item_id_pos] as item_id,
        fields[event_type_pos] as event_type,
        fields[value_pos] as value_raw,
        fields[timestamp_pos] as ts_raw
    from records
)

select * from final
