-- quarantine: the rejected rows of the batch (events or items) with the reason and where they came
-- from; written to lake/quarantine/dt=D/<kind>.parquet.
-- grain: one row per rejected source row (source_file, line_no).
-- reads: staged (from staged_events / staged_items), ingest_files.
-- parameters: $kind ('events' | 'items'), $ingested_at.
with rejected as (
    select s.dt, s.file_no, s.line_no, s.raw_text, s.reason, f.source_file
    from staged as s
    inner join ingest_files as f on s.file_no = f.file_no
    where s.reason is not null
),

final as (
    select
        cast(dt as date) as dt,
        cast($kind as varchar) as kind,
        cast(source_file as varchar) as source_file,
        cast(line_no as bigint) as line_no,
        cast(raw_text as varchar) as raw,
        cast(reason as varchar) as reason,
        cast($ingested_at as timestamptz) as ingested_at
    from rejected
    order by dt, source_file, line_no
)

select * from final
