"""Config of the `mirror` stream filter (being written)."""
