-- duplicate_items: accepted catalog rows superseded by a later row for the same item on the same drop date
-- (a later line, or a later file, wins); they are dropped and counted as duplicates.
-- grain: one row per superseded source row (file_no, line_no).
-- reads: staged (the validated catalog rows of every file of the batch, from staged_items). parameters: none.
with accepted as (
    select dt, item_id, file_no, line_no
    from staged
    where reason is null
),

ranked as (
    select
        *,
        row_number() over (partition by dt, item_id order by file_no desc, line_no desc) as recency
    from accepted
),

final as (
    select
        cast(file_no as integer) as file_no,
        cast(line_no as bigint) as line_no
    from ranked
    where recency > 1
)

select * from final
