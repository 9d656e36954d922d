"""Floor 3: Ray Serve deployments: the FastAPI ingress (REST, SSE, long-poll)."""
