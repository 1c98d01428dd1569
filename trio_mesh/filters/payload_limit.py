"""The `payload_limit` stream filter (being written)."""
