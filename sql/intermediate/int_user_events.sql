-- int_user_events: each user's events in a deterministic order, numbered from the most recent.
-- grain: one row per event_id. Ties on equal timestamps break by data date, source file, then line, so the
--        order is the order the source wrote them in.
-- reads: stg_lake_interactions. parameters: none.
with events as (
    select * from stg_lake_interactions
),

final as (
    select
        *,
        cast(row_number() over (
            partition by user_id order by event_ts, dt, source_file, line_no
        ) as bigint) as position,
        cast(count(*) over (partition by user_id) as bigint) as n_events
    from events
)

select * from final
