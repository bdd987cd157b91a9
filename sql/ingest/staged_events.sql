-- staged_events: validate source event fields from any landing format; the one place the event rules live.
-- Every input row comes out exactly once: reason is null for an accepted (or forgotten) row, otherwise it names
-- why the row is quarantined. event_key = md5_number of the JSON array of the normalised fields (user, item,
-- type, value, and the timestamp as hex epoch microseconds): JSON encoding keeps the tuple unambiguous whatever
-- an id holds, so the same event read twice (in any format) has the same key and different events never share
-- one; the lake's event_id is its 32 hex digits (interactions.sql). Ids holding a control character (C0, DEL,
-- C1) are quarantined; timestamps must be finite and inside the window around the file's data date.
-- grain: one row per source row (file_no, line_no).
-- reads: event_fields(file_no, line_no, dt, raw, text, parse_error, user_id, item_id, event_type, value_raw,
--        ts_raw), a view over event_fields_<format>.
-- parameters: $ts_format ('iso' | 'epoch_s' | 'epoch_ms'), $ts_min (the earliest timestamptz ever accepted),
--             $days_before / $days_after (the window: from the start of the data date - $days_before days to the
--             end of the data date + $days_after days), $allowed_event_types (varchar[], compared lowercased),
--             $default_event_type (used when the source has no event type; '' = none), $max_field_chars,
--             $max_raw_chars (bound on the raw text kept for quarantine); erasure (pipeline.erasure): $screen_users
--             (boolean: are there tombstones), $forgotten_users (varchar[]: their hashes), $erasure_key.
-- Rows of an erased user are `forgotten`: no reason, no raw text, no fields, so nothing of them is kept. A row
-- is theirs when its user id hashes to a tombstone (sha256 of the key and the id, hex); a row that fails
-- validation is theirs also when any token of its text (split at whitespace, quotes and JSON/CSV punctuation)
-- does, since a broken line may name the user anywhere.
with source as (
    select * from event_fields
),

parsed as (
    select
        file_no,
        line_no,
        dt,
        raw,
        text,
        parse_error,
        trim(user_id) as user_id,
        trim(item_id) as item_id,
        lower(trim(coalesce(event_type, nullif($default_event_type, '')))) as event_type,
        nullif(value_raw, '') as value_raw,  -- casts below ignore surrounding spaces
        nullif(ts_raw, '') as ts_raw
    from source
),

typed as (
    select
        *,
        try_cast(value_raw as double) as value,
        case $ts_format
            when 'iso' then try_cast(ts_raw as timestamptz)
            when 'epoch_s' then try(to_timestamp(try_cast(ts_raw as double)))
            when 'epoch_ms' then try(to_timestamp(try_cast(ts_raw as double) / 1000.0))
        end as event_ts
    from parsed
),

validated as (
    select
        *,
        case
            when parse_error is not null then parse_error
            when user_id is null or user_id = '' then 'missing_user_id'
            when item_id is null or item_id = '' then 'missing_item_id'
            when length(user_id) > $max_field_chars or length(item_id) > $max_field_chars then 'field_too_long'
            when regexp_matches(user_id || item_id, '[\x00-\x1f\x7f\x{80}-\x{9f}]') then 'control_character_in_id'
            when ts_raw is null then 'missing_timestamp'
            when event_ts is null then 'unparsable_timestamp'
            when isinf(event_ts) then 'infinite_timestamp'
            -- compared in epoch microseconds (cheap): days since 1970 of the window's ends
            when event_ts < $ts_min
                or epoch_us(event_ts) < (cast(dt - date '1970-01-01' as bigint) - $days_before) * 86400000000
                or epoch_us(event_ts) >= (cast(dt - date '1970-01-01' as bigint) + 1 + $days_after) * 86400000000
                then 'timestamp_out_of_window'
            when event_type is null
                or not list_contains(list_transform($allowed_event_types, lambda t: lower(trim(t))), event_type)
                then 'unknown_event_type'
            when value_raw is not null and (value is null or isnan(value) or isinf(value)) then 'non_numeric_value'
        end as reason
    from typed
),

screened as (
    select
        *,
        coalesce($screen_users and (
            list_contains(cast($forgotten_users as varchar[]), sha256($erasure_key || user_id))
            or (reason is not null and list_has_any(
                cast($forgotten_users as varchar[]),
                list_transform(
                    regexp_split_to_array(coalesce(text, cast(raw as varchar)), '[\s"'',;:=|{}\[\]\\]+'),
                    lambda token: sha256($erasure_key || token)
                )
            ))
        ), false) as forgotten
    from validated
),

final as (
    select
        cast(file_no as integer) as file_no,
        cast(line_no as bigint) as line_no,
        cast(dt as date) as dt,
        cast(case when not forgotten then reason end as varchar) as reason,
        cast(forgotten as boolean) as forgotten,
        cast(case when reason is not null and not forgotten then left(
            coalesce(replace(replace(text, chr(10), ''), chr(13), ''), cast(raw as varchar)), $max_raw_chars
        ) end as varchar) as raw_text,
        cast(case when reason is null and not forgotten then md5_number(to_json([
            user_id, item_id, event_type, coalesce(cast(value as varchar), ''), hex(epoch_us(event_ts))
        ])) end as uhugeint) as event_key,
        cast(case when reason is null and not forgotten then user_id end as varchar) as user_id,
        cast(case when reason is null and not forgotten then item_id end as varchar) as item_id,
        cast(case when reason is null and not forgotten then event_type end as varchar) as event_type,
        cast(case when reason is null and not forgotten then value end as double) as value,
        cast(case when reason is null and not forgotten then event_ts end as timestamptz) as event_ts
    from screened
)

select * from final
