-- expected_users: the night has recommendations for every expected (active) user and for no one else.
-- grain: one row per violating user_id (empty when the rule holds).
-- reads: candidate (user_id, ...), expected_users (user_id). parameters: none.
with candidate_users as (
    select distinct user_id from candidate
),

missing as (
    select u.user_id, 'missing' as problem
    from expected_users as u
    anti join candidate_users as c on u.user_id = c.user_id
),

unexpected as (
    select c.user_id, 'not an expected user' as problem
    from candidate_users as c
    anti join expected_users as u on c.user_id = u.user_id
),

final as (
    select cast(user_id as varchar) as user_id, cast(problem as varchar) as problem from missing
    union all
    select cast(user_id as varchar) as user_id, cast(problem as varchar) as problem from unexpected
)

select * from final order by user_id
