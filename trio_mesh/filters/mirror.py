"""The `mirror` stream filter (being written)."""
