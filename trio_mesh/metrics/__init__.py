"""Metrics: the proxy's counters, gauges and histograms as Envoy names them, read at scrape
time (``collect``), and their expositions (Prometheus, Envoy's ``/stats``)."""
