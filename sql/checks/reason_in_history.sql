-- reason_in_history: a row's reason, when present, is an item the user interacted with, and rows of the
-- popularity fallback have none.
-- grain: one row per violating (user_id, rank) (empty when the rule holds).
-- reads: candidate (user_id, rank, source, reason_item_id), seen (user_id, item_id). parameters: none.
with reasoned as (
    select user_id, rank, source, reason_item_id
    from candidate
    where reason_item_id is not null
),

outside_history as (
    select r.user_id, r.rank, r.reason_item_id, 'not in the user''s history' as problem
    from reasoned as r
    anti join seen as s on r.user_id = s.user_id and r.reason_item_id = s.item_id
),

on_fallback as (
    select user_id, rank, reason_item_id, 'reason on a popularity fallback row' as problem
    from reasoned
    where source = 'popular'
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(rank as integer) as rank,
        cast(reason_item_id as varchar) as reason_item_id,
        cast(problem as varchar) as problem
    from outside_history
    union all
    select
        cast(user_id as varchar) as user_id,
        cast(rank as integer) as rank,
        cast(reason_item_id as varchar) as reason_item_id,
        cast(problem as varchar) as problem
    from on_fallback
)

select * from final order by user_id, rank
