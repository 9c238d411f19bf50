"""Operations endpoints: liveness, readiness and Prometheus metrics, and the request-metrics middleware."""
