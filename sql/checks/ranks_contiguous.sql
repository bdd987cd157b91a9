-- ranks_contiguous: each user's ranks are exactly 1..n (no gaps, no repeats, none below 1, none null).
-- grain: one row per violating user_id (empty when the rule holds).
-- reads: candidate (user_id, rank). parameters: none.
with per_user as (
    select
        user_id,
        min(rank) as min_rank,
        max(rank) as max_rank,
        count(*) as n_rows,
        count(distinct rank) as n_distinct,
        count(*) filter (where rank is null) as n_null
    from candidate
    group by user_id
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(min_rank as integer) as min_rank,
        cast(max_rank as integer) as max_rank,
        cast(n_rows as bigint) as n_rows,
        cast(n_distinct as bigint) as n_distinct
    from per_user
    where n_null > 0 or min_rank <> 1 or max_rank <> n_rows or n_distinct <> n_rows
)

select * from final order by user_id
