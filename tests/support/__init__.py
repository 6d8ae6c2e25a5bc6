"""Helpers for the fault, fuzz and observability tests: a throwaway PostgreSQL, a TCP proxy, SSE readers."""
