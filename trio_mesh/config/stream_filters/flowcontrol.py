"""Config of the `flowcontrol` stream filter (being written)."""
