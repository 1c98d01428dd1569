"""Config of the `payload_limit` stream filter (being written)."""
