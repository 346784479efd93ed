"""The outside world (Prometheus, Alertmanager, Charter), each behind a narrow interface."""
