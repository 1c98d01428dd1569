"""The admin API: Envoy's and MOSN's endpoints over a small HTTP/1 server."""
