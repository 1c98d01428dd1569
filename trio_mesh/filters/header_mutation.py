"""The `header_mutation` stream filter (being written)."""
