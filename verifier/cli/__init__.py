"""The `railproof` command line (Typer)."""
