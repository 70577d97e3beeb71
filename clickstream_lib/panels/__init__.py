"""Dashboard and workbench panels, one module each (widgets.py wires them in)."""
