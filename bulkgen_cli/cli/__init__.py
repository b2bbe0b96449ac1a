"""The command line: typer commands and their Rich rendering. The only layer that imports typer and rich."""
