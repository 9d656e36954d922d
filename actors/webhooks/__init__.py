"""Webhook delivery building blocks: signing, SSRF guard, retry schedule, HTTP sender."""
