-- import_items_movielens_100k: the ML-100K catalog (u.item: '|'-separated, Latin-1, 19 genre flags).
-- grain: one row per movie (item_id).
-- parameters: $path, $genre_names (the 19 genre names of u.genre, in flag order).
with movies as (
    select *
    from read_csv($path, delim = '|', header = false, quote = '', escape = '', encoding = 'latin-1',
                  columns = {'item_id': 'VARCHAR', 'title': 'VARCHAR', 'release_date': 'VARCHAR',
                             'video_release_date': 'VARCHAR', 'imdb_url': 'VARCHAR',
                             'g01': 'VARCHAR', 'g02': 'VARCHAR', 'g03': 'VARCHAR', 'g04': 'VARCHAR',
                             'g05': 'VARCHAR', 'g06': 'VARCHAR', 'g07': 'VARCHAR', 'g08': 'VARCHAR',
                             'g09': 'VARCHAR', 'g10': 'VARCHAR', 'g11': 'VARCHAR', 'g12': 'VARCHAR',
                             'g13': 'VARCHAR', 'g14': 'VARCHAR', 'g15': 'VARCHAR', 'g16': 'VARCHAR',
                             'g17': 'VARCHAR', 'g18': 'VARCHAR', 'g19': 'VARCHAR'})
),

flagged as (
    select
        item_id,
        title,
        [g01, g02, g03, g04, g05, g06, g07, g08, g09, g10, g11, g12, g13, g14, g15, g16, g17, g18, g19]
            as flags
    from movies
),

final as (
    select
        cast(trim(item_id) as varchar) as item_id,
        cast(trim(title) as varchar) as title,
        cast('' as varchar) as description,
        cast(list_filter($genre_names, lambda g, i: flags[i] = '1' and g <> 'unknown') as varchar[]) as genres,
        cast([] as varchar[]) as tags,
        cast('' as varchar) as brand,
        cast([] as varchar[]) as categories
    from flagged
)

select * from final
