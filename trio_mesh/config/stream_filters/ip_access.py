"""Config of the `ip_access` stream filter (being written)."""
