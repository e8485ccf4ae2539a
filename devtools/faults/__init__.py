"""The fault matrix (#13): each fault as a function returning its row, for tests/faults and bench/faults.py."""
