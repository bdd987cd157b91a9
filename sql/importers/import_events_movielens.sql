-- import_events_movielens: MovieLens ratings as pipeline events (event_type 'rating', value = stars).
-- Layouts: ratings.csv (ml-latest / ml-25m: header, comma), u.data (ML-100K: tab, no header),
-- ratings.dat (ML-1M / 10M: '::', no header); timestamps are Unix seconds.
-- grain: one row per rating.
-- parameters: $path, $delim, $header (boolean), $encoding ('utf-8' | 'latin-1').
with ratings as (
    select *
    from read_csv($path, delim = $delim, header = $header, quote = '"', escape = '"', encoding = $encoding,
                  columns = {'user_id': 'VARCHAR', 'item_id': 'VARCHAR', 'rating': 'DOUBLE', 'ts': 'BIGINT'})
),

final as (
    select
        cast(trim(user_id) as varchar) as user_id,
        cast(trim(item_id) as varchar) as item_id,
        cast('rating' as varchar) as event_type,
        cast(rating as double) as value,
        cast(to_timestamp(ts) as timestamptz) as event_ts
    from ratings
)

select * from final
