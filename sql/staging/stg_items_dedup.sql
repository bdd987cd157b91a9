-- stg_items_dedup: accepted catalog rows of one drop date, latest version per item.
-- grain: one row per item_id; a later line (or later file) of the same date wins.
-- reads: staged (the validated catalog rows of every file of the date). parameters: none.
with accepted as (
    select * from staged where reason is null
),

final as (
    select *
    from accepted
    qualify row_number() over (partition by item_id order by source_file desc, line_no desc) = 1
)

select * from final
