"""Tracing: trace context propagation (W3C, B3, SOFA), spans exported over OTLP/HTTP.

``context`` is sans-IO (wire formats); ``tracer`` runs on the request path; ``export`` queues
and exports spans (the OpenTelemetry SDK is imported only when tracing is on).
"""
