"""o2chain dashboards: Grafana dashboards as code."""
