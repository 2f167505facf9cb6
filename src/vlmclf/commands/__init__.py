"""Thin Typer commands for the analyses; cli.py registers them.

Each one parses its options, calls one function of ``vlmclf.analysis``, and prints.
"""
