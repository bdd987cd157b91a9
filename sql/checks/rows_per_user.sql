-- rows_per_user: every user in the candidate has exactly min($top_n, catalog items they have not seen) rows.
-- grain: one row per violating user_id (empty when the rule holds). Absent users are expected_users' concern.
-- reads: candidate (user_id, ...), seen (user_id, item_id), catalog (item_id). parameters: $top_n.
with counts as (
    select user_id, count(*) as n_rows from candidate group by user_id
),

catalog_size as (
    select count(distinct item_id) as n_items from catalog
),

seen_in_catalog as (
    select s.user_id, count(distinct s.item_id) as n_seen
    from seen as s
    semi join catalog as k on s.item_id = k.item_id
    group by s.user_id
),

final as (
    select
        cast(c.user_id as varchar) as user_id,
        cast(c.n_rows as bigint) as n_rows,
        cast(least($top_n, n.n_items - coalesce(s.n_seen, 0)) as bigint) as n_expected
    from counts as c
    cross join catalog_size as n
    left join seen_in_catalog as s on c.user_id = s.user_id
    where c.n_rows <> least($top_n, n.n_items - coalesce(s.n_seen, 0))
)

select * from final order by user_id
