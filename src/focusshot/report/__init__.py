"""Reports: attention-map figures."""
