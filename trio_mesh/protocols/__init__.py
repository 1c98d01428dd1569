"""Sans-IO protocol codecs: bytes in, events out; events in, bytes out (no trio here, ever)."""
