-- scores_non_increasing: scores are finite and, within a user, a better rank never has a lower score.
-- grain: one row per violating (user_id, rank) (empty when the rule holds).
-- reads: candidate (user_id, rank, score). parameters: none.
with ordered as (
    select user_id, rank, score, lag(score) over (partition by user_id order by rank) as previous_score
    from candidate
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(rank as integer) as rank,
        cast(score as double) as score,
        cast(previous_score as double) as previous_score
    from ordered
    where score is null or isnan(score) or isinf(score) or score > previous_score
)

select * from final order by user_id, rank
