-- quarantine_reasons: why rows of each landing file of the batch were quarantined.
-- grain: one row per (file_no, reason).
-- reads: staged (from staged_events / staged_items). parameters: none.
with rejected as (
    select file_no, reason
    from staged
    where reason is not null
),

final as (
    select
        cast(file_no as integer) as file_no,
        cast(reason as varchar) as reason,
        cast(count(*) as bigint) as n
    from rejected
    group by file_no, reason
    order by file_no, reason
)

select * from final
