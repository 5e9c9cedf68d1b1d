"""The web layer: HTTP only (dashboard, API, admin, middleware, metrics, health)."""
