"""Helpers the tests share: private PostgreSQL clusters and the like (see conftest.py)."""
