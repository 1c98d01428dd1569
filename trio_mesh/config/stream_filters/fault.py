"""Config of the `fault` stream filter (being written)."""
