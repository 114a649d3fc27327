"""The log: ports and adapters, the outbox relay, and the runners that feed projections."""
