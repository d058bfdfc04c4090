"""The retrieval index: the passage corpus (`corpus`), read streamed and stored for random
access by row number."""
