-- unique_items: no item appears twice in one user's list.
-- grain: one row per violating (user_id, item_id) (empty when the rule holds).
-- reads: candidate (user_id, item_id). parameters: none.
with final as (
    select cast(user_id as varchar) as user_id, cast(item_id as varchar) as item_id, cast(count(*) as bigint) as n
    from candidate
    group by user_id, item_id
    having count(*) > 1
)

select * from final order by user_id, item_id
