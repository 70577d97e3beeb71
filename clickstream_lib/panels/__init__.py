"""The widget panels and blocks that the dashboard (:mod:`clickstream_lib.dashboard`) and the workbench
(:mod:`clickstream_lib.workbench`) are built from."""
