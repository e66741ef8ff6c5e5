"""The engine's core: configuration, wiring, chains and verification runs, errors, time."""
