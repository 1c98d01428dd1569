"""The life of one downstream stream: decode, filters, route, balance, pool, forward, access log."""
