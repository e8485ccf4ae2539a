"""`fleetpulse demo`: the whole story on the local stack, and the report it writes."""
