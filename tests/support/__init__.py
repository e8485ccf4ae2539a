"""Helpers that test modules share. Test modules import from here, never from a conftest.py
(conftest files hold fixtures and import their helpers from here too)."""
