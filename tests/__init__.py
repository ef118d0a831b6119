"""lampctl test suite."""
