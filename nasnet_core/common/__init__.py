"""Shared plumbing: config schema, command-line helpers, atomic file I/O, in-memory datasets, errors."""
