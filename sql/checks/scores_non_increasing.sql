-- scores_non_increasing: within a user, a better rank never has a lower score; scores are finite.
-- returns: violating rows. reads: candidate. parameters: none.
with ordered as (
    select user_id, rank, score, lag(score) over (partition by user_id order by rank) as previous_score
    from candidate
)

select user_id, rank, score, previous_score
from ordered
where score is null or isnan(score) or isinf(score) or score > previous_score
order by user_id, rank
