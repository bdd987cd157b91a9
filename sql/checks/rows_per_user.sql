-- rows_per_user: every expected user has exactly min($top_n, items they can still get) rows.
-- returns: the violating users (one row each, with counts), empty when the rule holds.
-- reads: candidate (user_id, rank, item_id, score, source), expected_users (user_id), seen (user_id, item_id),
--        catalog (item_id). parameters: $top_n.
with counts as (
    select user_id, count(*) as n_rows from candidate group by user_id
),

eligible as (
    select
        u.user_id,
        (select count(*) from catalog) - count(distinct s.item_id) filter (where s.item_id in (select item_id from catalog))
            as n_eligible
    from expected_users as u
    left join seen as s on u.user_id = s.user_id
    group by u.user_id
),

final as (
    select e.user_id, coalesce(c.n_rows, 0) as n_rows, least($top_n, e.n_eligible) as n_expected
    from eligible as e
    left join counts as c on e.user_id = c.user_id
    where coalesce(c.n_rows, 0) <> least($top_n, e.n_eligible)
    union all
    select c.user_id, c.n_rows, 0 as n_expected
    from counts as c
    anti join expected_users as u on c.user_id = u.user_id
)

select * from final order by user_id
