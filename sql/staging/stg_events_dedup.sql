-- stg_events_dedup: accepted events of one data date with exact duplicates (same event_id) removed.
-- grain: one row per event_id; the first occurrence (by source file, then line) is kept.
-- reads: staged (the validated rows of every file of the date). parameters: none.
with accepted as (
    select * from staged where reason is null
),

final as (
    select *
    from accepted
    qualify row_number() over (partition by event_id order by source_file, line_no) = 1
)

select * from final
