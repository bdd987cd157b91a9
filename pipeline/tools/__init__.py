"""Tools around the production path: the CLI, the demo source, dataset importers, the local Airflow, benchmarks."""
