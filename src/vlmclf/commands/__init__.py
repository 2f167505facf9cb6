"""Thin Typer commands for the analyses; cli.py registers them. Each parses, calls one function, prints."""
