-- stg_quarantine: the rejected rows of one data date and kind, with the reason and where they came from.
-- grain: one row per rejected source line (source_file, line_no).
-- reads: staged. parameters: $dt (data date), $kind ('events' | 'items'), $ingested_at.
with rejected as (
    select * from staged where reason is not null
),

final as (
    select
        cast($dt as date) as dt,
        cast($kind as varchar) as kind,
        cast(source_file as varchar) as source_file,
        cast(line_no as bigint) as line_no,
        cast(raw_text as varchar) as raw,
        cast(reason as varchar) as reason,
        cast($ingested_at as timestamptz) as ingested_at
    from rejected
    order by source_file, line_no
)

select * from final
