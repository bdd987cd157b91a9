-- no_seen_items: nobody is recommended an item they already interacted with.
-- grain: one row per violating (user_id, rank) (empty when the rule holds).
-- reads: candidate (user_id, rank, item_id), seen (user_id, item_id). parameters: none.
with final as (
    select cast(c.user_id as varchar) as user_id, cast(c.rank as integer) as rank, cast(c.item_id as varchar) as item_id
    from candidate as c
    semi join seen as s on c.user_id = s.user_id and c.item_id = s.item_id
)

select * from final order by user_id, rank
