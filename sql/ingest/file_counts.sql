-- file_counts: per landing file of the batch, how its rows ended (events or items): accepted,
-- quarantined, dropped as duplicates, dropped as an erased user's (forgotten); accepted events whose item is not
-- in the catalog as of their date.
-- grain: one row per file_no of ingest_files (files with no rows included).
-- reads: ingest_files, staged (from staged_events / staged_items), duplicates (from duplicate_events /
--        duplicate_items), known_items(item_id, first_dt) (from known_items.sql; empty for items).
-- parameters: $count_unknown_items (boolean: true for events).
with files as (
    select file_no from ingest_files
),

outcomes as (
    select
        s.file_no,
        s.reason is not null as is_quarantined,
        s.forgotten as is_forgotten,
        d.file_no is not null as is_duplicate,
        s.reason is null and not s.forgotten and d.file_no is null and $count_unknown_items
            and (k.first_dt is null or k.first_dt > s.dt) as is_unknown_item
    from staged as s
    left join duplicates as d on s.file_no = d.file_no and s.line_no = d.line_no
    left join known_items as k on s.reason is null and not s.forgotten and s.item_id = k.item_id
),

per_file as (
    select
        file_no,
        count(*) as rows_staged,
        count(*) filter (where is_quarantined) as quarantined,
        count(*) filter (where is_duplicate) as duplicates,
        count(*) filter (where is_forgotten) as forgotten,
        count(*) filter (where is_unknown_item) as unknown_items
    from outcomes
    group by file_no
),

final as (
    select
        cast(f.file_no as integer) as file_no,
        cast(coalesce(p.rows_staged, 0) as bigint) as rows_staged,
        cast(coalesce(p.rows_staged - p.quarantined - p.duplicates - p.forgotten, 0) as bigint) as accepted,
        cast(coalesce(p.quarantined, 0) as bigint) as quarantined,
        cast(coalesce(p.duplicates, 0) as bigint) as duplicates,
        cast(coalesce(p.forgotten, 0) as bigint) as forgotten,
        cast(coalesce(p.unknown_items, 0) as bigint) as unknown_items
    from files as f
    left join per_file as p on f.file_no = p.file_no
    order by f.file_no
)

select * from final
