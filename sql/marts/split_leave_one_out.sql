-- split_leave_one_out: the leave-one-out split: last item = test, second-to-last = validation.
-- grain: one row per user_id with at least 3 events (shorter histories only feed training).
-- reads: user_sequences. parameters: none.
with sequences as (
    select * from user_sequences
    where len(item_ids) >= 3
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(item_ids[1:len(item_ids) - 2] as varchar[]) as train_items,
        cast(item_ids[len(item_ids) - 1] as varchar) as valid_item,
        cast(item_ids[len(item_ids)] as varchar) as test_item
    from sequences
    order by user_id
)

select * from final
