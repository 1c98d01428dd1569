"""Config of the `gzip` stream filter (being written)."""
