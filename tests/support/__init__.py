"""Test helpers that are not fixtures of one test module (throwaway PostgreSQL clusters, ...)."""
