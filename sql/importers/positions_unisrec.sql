-- positions_unisrec: UniSRec's *.full_sequences.tsv (user_index, user_id, item_index_seq,
-- item_asin_seq; items space-separated, oldest first) as (user, item, position) rows.
-- grain: one row per (user_id, position).
-- parameters: $path.
with users as (
    select user_id, string_split(trim(item_asin_seq), ' ') as items
    from read_csv($path, delim = '\t', header = true, quote = '',
                  columns = {'user_index': 'VARCHAR', 'user_id': 'VARCHAR', 'item_index_seq': 'VARCHAR',
                             'item_asin_seq': 'VARCHAR'})
),

final as (
    select
        cast(user_id as varchar) as user_id,
        cast(unnest(items) as varchar) as item_id,
        cast(unnest(generate_series(0, len(items) - 1)) as bigint) as position
    from users
)

select * from final
