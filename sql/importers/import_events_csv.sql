-- import_events_csv: an events CSV (header user_id,item_id,timestamp) as pipeline events ('view').
-- Timestamps: ISO-8601, Unix seconds or milliseconds, or small numbers that only order a user's events
-- (positions): those become synthetic timestamps, one minute apart per user from $synthetic_start,
-- keeping each user's order (ties by item_id).
-- grain: one row per CSV row.
-- parameters: $path, $synthetic_start (timestamptz), $epoch_s_min (smallest plausible Unix seconds).
with raw as (
    select trim(user_id) as user_id, trim(item_id) as item_id, trim(timestamp) as ts_raw,
           try_cast(trim(timestamp) as double) as ts_num
    from read_csv($path, header = true, quote = '"',
                  columns = {'user_id': 'VARCHAR', 'item_id': 'VARCHAR', 'timestamp': 'VARCHAR'})
),

kind as (
    select
        case
            when count(*) filter (where ts_num is null) > 0 then 'iso'
            when min(ts_num) >= cast($epoch_s_min as double) * 1000 then 'epoch_ms'
            when min(ts_num) >= $epoch_s_min then 'epoch_s'
            else 'position'
        end as ts_kind
    from raw
),

timed as (
    select
        r.user_id,
        r.item_id,
        case k.ts_kind
            when 'iso' then try_cast(r.ts_raw as timestamptz)
            when 'epoch_ms' then to_timestamp(r.ts_num / 1000)
            when 'epoch_s' then to_timestamp(r.ts_num)
            else $synthetic_start + to_minutes(
                row_number() over (partition by r.user_id order by r.ts_num, r.item_id) - 1)
        end as event_ts
    from raw as r
    cross join kind as k
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(item_id as varchar) as item_id,
        cast('view' as varchar) as event_type,
        cast(null as double) as value,
        cast(event_ts as timestamptz) as event_ts
    from timed
)

select * from final
