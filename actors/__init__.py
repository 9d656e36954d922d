"""Floor 2: shard actors, webhook dispatcher, namespace->shard routing."""
