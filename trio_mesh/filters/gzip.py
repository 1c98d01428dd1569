"""The `gzip` stream filter (being written)."""
