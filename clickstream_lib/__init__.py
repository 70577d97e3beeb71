"""clickstream_lib: a Jupyter-first workbench for real-time clickstream analytics (Kafka -> ClickHouse)."""
