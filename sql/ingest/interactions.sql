-- interactions: the lake's interactions rows for the published dates of the batch (unordered; the ingest
-- stage orders by date when it writes several dates from one query).
-- grain: one row per accepted, deduplicated event (dt, event_id); event_id = the 32 hex digits of event_key.
-- reads: staged (from staged_events), duplicates (from duplicate_events), ingest_files.
-- parameters: $dates (the data dates to publish; dates over the quarantine threshold are left out),
--             $ingested_at.
with accepted as (
    select s.*
    from staged as s
    anti join duplicates as d on s.file_no = d.file_no and s.line_no = d.line_no
    where s.reason is null and not s.forgotten and list_contains($dates, s.dt)
),

final as (
    select
        cast(case  -- 32 hex digits (hex() drops leading zeros)
            when a.event_key >= cast(1 as uhugeint) << 124 then hex(a.event_key)
            else lpad(hex(a.event_key), 32, '0')
        end as varchar) as event_id,
        cast(a.user_id as varchar) as user_id,
        cast(a.item_id as varchar) as item_id,
        cast(a.event_type as varchar) as event_type,
        cast(a.value as double) as value,
        cast(a.event_ts as timestamptz) as event_ts,
        cast(a.dt as date) as dt,
        cast(f.source_file as varchar) as source_file,
        cast(a.line_no as bigint) as line_no,
        cast($ingested_at as timestamptz) as ingested_at
    from accepted as a
    inner join ingest_files as f on a.file_no = f.file_no
)

select * from final
