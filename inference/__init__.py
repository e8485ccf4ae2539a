"""Serving: the KServe model server (``server/``, `fleetpulse serve`) and the Kafka-consuming
transformer (``transformer/``, `fleetpulse score`).

The transformer's import path stays free of TensorFlow and of the kserve package (2.6 s to import);
only the server side loads them. The two packages never import each other (see .importlinter).
"""

DEFAULT_MODEL = "car-anomaly"
"""The model the server serves and the transformer asks for unless configured otherwise."""
