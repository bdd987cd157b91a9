-- no_seen_items: nobody is recommended an item they already interacted with.
-- returns: violating rows. reads: candidate, seen (user_id, item_id). parameters: none.
select c.user_id, c.item_id, c.rank
from candidate as c
semi join seen as s on c.user_id = s.user_id and c.item_id = s.item_id
order by c.user_id, c.rank
