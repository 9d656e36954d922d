"""Webhooks, all of them: the outbox and its coalescing windows, bodies, the shard's delivery
loop, the dispatcher deployment and its client, signing, the SSRF guard, retries, the sender."""
