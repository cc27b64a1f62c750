"""Figures of the paper (filled in below)."""
