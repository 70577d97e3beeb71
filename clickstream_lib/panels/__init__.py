"""Widget panels that the dashboard and the workbench (:mod:`clickstream_lib.widgets`) are built from."""
