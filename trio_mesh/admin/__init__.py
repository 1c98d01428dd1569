"""The admin API: Envoy's and MOSN's operator endpoints, served by the proxy itself."""
