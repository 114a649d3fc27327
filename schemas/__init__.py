"""Data contracts: events on the log, commands, API models. No behaviour, no I/O."""
