"""Omni: composition root, settings and command line."""
