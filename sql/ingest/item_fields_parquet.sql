-- item_fields_parquet: the mapped columns of Parquet catalog files as the pipeline's item fields.
-- grain: one row per Parquet row (file_no, line_no = 1-based row number in the file).
-- reads: source_rows(file_no, line_no, item_id, title, description, brand, updated_at, removed: varchar; genres,
--        categories, tags: varchar[]), streamed by the ingest stage; ingest_files(file_no, dt, missing_columns).
-- parameters: none.
with rows_in as (
    select
        r.*,
        f.dt,
        f.missing_columns
    from source_rows as r
    inner join ingest_files as f on r.file_no = f.file_no
),

final as (
    select
        cast(file_no as integer) as file_no,
        cast(line_no as bigint) as line_no,
        cast(dt as date) as dt,
        cast(null as blob) as raw,
        cast(to_json(struct_pack(item_id, title, description, brand, genres, categories, tags)) as varchar) as text,
        case when missing_columns is not null then 'missing_columns' end as parse_error,
        item_id,
        title,
        description,
        brand,
        genres,
        categories,
        tags,
        updated_at as updated_raw,
        removed as removed_raw
    from rows_in
)

select * from final
