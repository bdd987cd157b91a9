-- user_seen_items: every (user, item) pair the user ever interacted with, up to the run date.
-- grain: one row per (user_id, item_id). Used to remove seen items from recommendations.
-- reads: stg_lake_interactions. parameters: none.
with events as (
    select user_id, item_id from stg_lake_interactions
),

final as (
    select distinct cast(user_id as varchar) as user_id, cast(item_id as varchar) as item_id
    from events
    order by user_id, item_id
)

select * from final
