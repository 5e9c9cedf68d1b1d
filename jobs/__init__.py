"""The jobs app: kinds, lifecycle, API, dashboard, back pressure and periodic work."""
