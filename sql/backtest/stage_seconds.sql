-- stage_seconds: the wall time of each stage of one data date's night, from the runs ledger (the latest
--                successful run of each stage of the date).
-- grain: one row per stage. reads: runs. parameters: $dt (date).
with runs_of_date as (
    select
        stage,
        started_at,
        finished_at,
        row_number() over (partition by stage order by finished_at desc) as newest
    from runs
    where dt = cast($dt as date) and status = 'ok'
),

final as (
    select
        cast(stage as varchar) as stage,
        cast(extract(epoch from finished_at - started_at) as double precision) as seconds
    from runs_of_date
    where newest = 1
)

select * from final order by stage
