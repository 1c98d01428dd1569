"""The `flowcontrol` stream filter (being written)."""
