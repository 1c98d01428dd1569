"""xDS (Envoy v3 discovery) support: proto types, conversion to trio-mesh configuration."""
