"""Where features go: object stores, the SQLite feature cache, Parquet feature datasets."""
