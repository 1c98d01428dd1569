"""Config of the `header_mutation` stream filter (being written)."""
