-- ranks_contiguous: each user's ranks are exactly 1..n (no gaps, no repeats, none below 1).
-- returns: violating users. reads: candidate. parameters: none.
select user_id, min(rank) as min_rank, max(rank) as max_rank, count(*) as n, count(distinct rank) as n_distinct
from candidate
group by user_id
having min(rank) <> 1 or max(rank) <> count(*) or count(distinct rank) <> count(*)
order by user_id
