"""Load generators and counters that tests and benches drive against the real servers."""
