-- catalog_only: every recommended item is in the current catalog.
-- returns: violating rows. reads: candidate, catalog (item_id). parameters: none.
select c.user_id, c.item_id, c.rank
from candidate as c
anti join catalog as k on c.item_id = k.item_id
order by c.user_id, c.rank
