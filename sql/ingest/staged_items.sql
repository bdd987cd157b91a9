-- staged_items: validate catalog fields from any landing format; the one place the item rules live.
-- Every input row comes out exactly once: reason is null for an accepted row, otherwise why it is quarantined.
-- item_id must not hold a control character (C0, DEL, C1). `removed` (true/false/1/0/yes/no, empty = false) marks
-- a discontinued item; a removal needs no text, any other value is invalid_removed_flag. Attribute lists are flattened, '|'-separated strings split, elements trimmed, empty ones dropped.
-- grain: one row per source row (file_no, line_no).
-- reads: item_fields(file_no, line_no, dt, raw, text, parse_error, item_id, title, description, brand,
--        genres, categories, tags, updated_raw, removed_raw), a view over item_fields_<format>.
-- parameters: $max_field_chars (bound on item_id), $max_raw_chars (bound on the raw text kept for quarantine).
with source as (
    select * from item_fields
),

normalised as (
    select
        file_no,
        line_no,
        dt,
        raw,
        text,
        parse_error,
        trim(item_id) as item_id,
        trim(coalesce(title, '')) as title,
        trim(coalesce(description, '')) as description,
        trim(coalesce(brand, '')) as brand,
        list_filter(
            list_transform(flatten(list_transform(coalesce(genres, []), lambda g: string_split(g, '|'))),
                           lambda g: trim(g)),
            lambda g: g <> ''
        ) as genres,
        list_filter(
            list_transform(flatten(list_transform(coalesce(categories, []), lambda g: string_split(g, '|'))),
                           lambda g: trim(g)),
            lambda g: g <> ''
        ) as categories,
        list_filter(
            list_transform(flatten(list_transform(coalesce(tags, []), lambda g: string_split(g, '|'))),
                           lambda g: trim(g)),
            lambda g: g <> ''
        ) as tags,
        try_cast(updated_raw as timestamptz) as updated_at,
        case
            when removed_raw is null or trim(removed_raw) = '' then false
            when lower(trim(removed_raw)) in ('true', '1', 'yes') then true
            when lower(trim(removed_raw)) in ('false', '0', 'no') then false
        end as removed
    from source
),

validated as (
    select
        *,
        case
            when parse_error is not null then parse_error
            when item_id is null or item_id = '' then 'missing_item_id'
            when length(item_id) > $max_field_chars then 'field_too_long'
            when regexp_matches(item_id, '[\x00-\x1f\x7f\x{80}-\x{9f}]') then 'control_character_in_id'
            when removed is null then 'invalid_removed_flag'
            when title = '' and description = '' and not removed then 'missing_text'
        end as reason
    from normalised
),

final as (
    select
        cast(file_no as integer) as file_no,
        cast(line_no as bigint) as line_no,
        cast(dt as date) as dt,
        cast(reason as varchar) as reason,
        cast(false as boolean) as forgotten,  -- catalog rows name no user (see staged_events)
        cast(case when reason is not null then left(
            coalesce(replace(replace(text, chr(10), ''), chr(13), ''), cast(raw as varchar)), $max_raw_chars
        ) end as varchar) as raw_text,
        cast(item_id as varchar) as item_id,
        cast(title as varchar) as title,
        cast(description as varchar) as description,
        cast(brand as varchar) as brand,
        cast(coalesce(genres, []) as varchar[]) as genres,
        cast(coalesce(categories, []) as varchar[]) as categories,
        cast(coalesce(tags, []) as varchar[]) as tags,
        cast(updated_at as timestamptz) as updated_at,
        cast(coalesce(removed, false) as boolean) as removed
    from validated
)

select * from final
