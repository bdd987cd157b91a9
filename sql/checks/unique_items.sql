-- unique_items: no item appears twice in one user's list.
-- returns: violating (user_id, item_id) pairs. reads: candidate. parameters: none.
select user_id, item_id, count(*) as n
from candidate
group by user_id, item_id
having count(*) > 1
order by user_id
