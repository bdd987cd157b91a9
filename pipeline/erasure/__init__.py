"""Erasure (the right to be forgotten): `nightly-recs forget --user U` and the `forget_users` DAG.

A request records an audited tombstone per user in the warehouse (the keyed hash of the id, never the id; who
asked, when, why) and then, in the same call, removes the user from every copy the pipeline made: lake
partitions, quarantine rows whose raw text holds the id, marts, staged tables, the published table (the DuckDB
file is rebuilt so deleted values do not linger in free blocks), reports, candidate folders, MLflow artifacts
and tags, the local Airflow's log files. From then on ingest drops the user's rows (counted as `forgotten`),
publishing never expects them, and the next training starts from scratch instead of warm from a model that saw
them. A tombstone stays pending until every step is done; while one is pending the night's ingest and training
refuse to run, and rerunning `forget` with the same ids completes it (every step is idempotent and atomic).

Modules: ``identity`` (ids, the per-home key, hashes), ``lineage`` (tombstone state, which models saw an erased
user, the publishing filter), ``rewrite`` (Parquet files, reports, text files), ``run`` (the entry, and MLflow tags).
"""
