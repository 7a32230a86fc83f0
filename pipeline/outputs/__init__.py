"""Outputs: histogram layout and files, the run report, plots."""
