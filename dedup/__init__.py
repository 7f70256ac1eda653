"""Corpus-wide duplicate detection, run in the select pass on metadata only."""
