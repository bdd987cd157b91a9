-- catalog_only: every recommended item is in the current catalog.
-- grain: one row per violating (user_id, rank) (empty when the rule holds).
-- reads: candidate (user_id, rank, item_id), catalog (item_id). parameters: none.
with final as (
    select cast(c.user_id as varchar) as user_id, cast(c.rank as integer) as rank, cast(c.item_id as varchar) as item_id
    from candidate as c
    anti join catalog as k on c.item_id = k.item_id
)

select * from final order by user_id, rank
