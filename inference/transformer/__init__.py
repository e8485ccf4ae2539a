"""The transformer (`fleetpulse score`): Kafka ``sensor-data`` -> model server (gRPC V2) -> hysteresis
-> alerts + digital twins.

``loop`` is the thin adapter around Kafka, gRPC and MongoDB. What it decides is plain code beside it,
with no client imports (see .importlinter), tested without Kafka: ``checkpoint`` (which cars are due
for a twin write, how far a commit may go: the no-loss rules), ``car_table`` (per-car state and the
twin snapshot), ``batching`` (poll batch -> micro-batches, applied in order) and ``windows``.
"""
