-- duplicate_events: the accepted rows that repeat an earlier accepted row of the same data date (same
-- event_key); they are dropped and counted as duplicates. The first occurrence (by file, then line) is kept.
-- grain: one row per duplicate source row (file_no, line_no).
-- reads: staged (the validated rows of every file of the batch, from staged_events). parameters: none.
with accepted as (
    select dt, event_key, file_no, line_no
    from staged
    where reason is null and not forgotten
),

ranked as (
    select
        *,
        row_number() over (partition by dt, event_key order by file_no, line_no) as occurrence
    from accepted
),

final as (
    select
        cast(file_no as integer) as file_no,
        cast(line_no as bigint) as line_no
    from ranked
    where occurrence > 1
)

select * from final
