"""Dashboard panels that live in modules of their own; :mod:`clickstream_lib.widgets` wires them in."""
