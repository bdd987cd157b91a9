-- stg_events: validate one batch of source event fields. Every input row comes out exactly once:
-- reason is null for an accepted row, otherwise it names why the row is quarantined.
-- grain: one row per source line (line_no).
-- reads: event_fields(line_no, raw_text, parse_error, user_id, item_id, event_type, value_raw, ts_raw).
-- parameters: $source_file (landing file name), $ts_format ('iso' | 'epoch_s' | 'epoch_ms'), $ts_min and $ts_max (accepted timestamp window,
--             timestamptz, max exclusive), $allowed_event_types (varchar[]), $max_field_chars (integer).
with source as (
    select * from event_fields
),

parsed as (
    select
        line_no,
        raw_text,
        parse_error,
        trim(user_id) as user_id,
        trim(item_id) as item_id,
        lower(trim(event_type)) as event_type,
        value_raw,
        ts_raw,
        try_cast(value_raw as double) as value,
        case $ts_format
            when 'iso' then try_cast(ts_raw as timestamptz)
            when 'epoch_s' then try(to_timestamp(try_cast(ts_raw as double)))
            when 'epoch_ms' then try(to_timestamp(try_cast(ts_raw as double) / 1000.0))
        end as event_ts
    from source
),

validated as (
    select
        *,
        case
            when parse_error is not null then parse_error
            when user_id is null or user_id = '' then 'missing_user_id'
            when item_id is null or item_id = '' then 'missing_item_id'
            when length(user_id) > $max_field_chars or length(item_id) > $max_field_chars then 'field_too_long'
            when ts_raw is null or trim(ts_raw) = '' then 'missing_timestamp'
            when event_ts is null then 'unparsable_timestamp'
            when event_ts < $ts_min or event_ts >= $ts_max then 'timestamp_out_of_window'
            when event_type is null or not list_contains($allowed_event_types, event_type) then 'unknown_event_type'
            when value_raw is not null and (value is null or isnan(value) or isinf(value)) then 'non_numeric_value'
        end as reason
    from parsed
),

final as (
    select
        line_no,
        raw_text,
        reason,
        case when reason is null then md5(concat_ws(chr(31),
            user_id, item_id, event_type, coalesce(cast(value as varchar), ''), cast(epoch_us(event_ts) as varchar)
        )) end as event_id,
        user_id,
        item_id,
        event_type,
        cast(value as double) as value,
        cast(event_ts as timestamptz) as event_ts,
        cast($source_file as varchar) as source_file
    from validated
)

select * from final
