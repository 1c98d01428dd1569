"""The `ip_access` stream filter (being written)."""
