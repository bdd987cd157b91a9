-- items: the lake's items rows for the dates of the batch (one row per item version and drop date).
-- grain: one row per (dt, item_id).
-- reads: staged (from staged_items), duplicates (from duplicate_items), ingest_files.
-- parameters: $dates (the drop dates to publish), $ingested_at.
with latest as (
    select s.*
    from staged as s
    anti join duplicates as d on s.file_no = d.file_no and s.line_no = d.line_no
    where s.reason is null and list_contains($dates, s.dt)
),

final as (
    select
        cast(l.item_id as varchar) as item_id,
        cast(l.title as varchar) as title,
        cast(l.description as varchar) as description,
        cast(l.brand as varchar) as brand,
        cast(l.genres as varchar[]) as genres,
        cast(l.categories as varchar[]) as categories,
        cast(l.tags as varchar[]) as tags,
        cast(coalesce(l.updated_at, cast(l.dt as timestamptz)) as timestamptz) as updated_at,
        cast(l.removed as boolean) as removed,
        cast(l.dt as date) as dt,
        cast(f.source_file as varchar) as source_file,
        cast($ingested_at as timestamptz) as ingested_at
    from latest as l
    inner join ingest_files as f on l.file_no = f.file_no
)

select * from final
