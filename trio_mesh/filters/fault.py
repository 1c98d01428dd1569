"""The `fault` stream filter (being written)."""
