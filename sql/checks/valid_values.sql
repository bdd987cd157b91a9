-- valid_values: no null ids, and source is 'model' or 'popular'.
-- grain: one row per violating candidate row (empty when the rule holds).
-- reads: candidate (user_id, rank, item_id, source). parameters: none.
with final as (
    select
        cast(user_id as varchar) as user_id,
        cast(rank as integer) as rank,
        cast(item_id as varchar) as item_id,
        cast(source as varchar) as source
    from candidate
    where user_id is null or item_id is null or source is null or source not in ('model', 'popular')
)

select * from final order by user_id, rank
