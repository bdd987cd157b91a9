-- item_fields_csv: the pipeline's item fields of catalog CSV lines, for staged_items. Attributes (genres,
-- categories, tags) are '|'-separated strings, passed on as one-element lists (staged_items splits them).
-- grain: one row per data line (file_no, line_no); nothing is filtered.
-- reads: csv_records (from csv_records.sql); ingest_files (per file: the 1-based position of each mapped field
--        in its header, null when absent).
-- parameters: none.
with records as (
    select
        r.*,
        f.item_id_pos,
        f.title_pos,
        f.description_pos,
        f.brand_pos,
        f.genres_pos,
        f.categories_pos,
        f.tags_pos,
        f.updated_at_pos,
        f.removed_pos
    from csv_records as r
    inner join ingest_files as f on r.file_no = f.file_no
),

final as (
    select
        file_no,
        line_no,
        dt,
        raw,
        text,
        parse_error,
        fields[item_id_pos] as item_id,
        fields[title_pos] as title,
        fields[description_pos] as description,
        fields[brand_pos] as brand,
        [fields[genres_pos]] as genres,
        [fields[categories_pos]] as categories,
        [fields[tags_pos]] as tags,
        fields[updated_at_pos] as updated_raw,
        fields[removed_pos] as removed_raw
    from records
)

select * from final
