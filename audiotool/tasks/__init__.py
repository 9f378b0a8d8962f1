"""The jobs as library functions (the Python API the CLI calls)."""
