"""Pure folds from events to views. No clock, no randomness, no I/O."""
