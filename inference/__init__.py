"""Serving: the KServe model server (`fleetpulse serve`) and the Kafka-consuming transformer (`fleetpulse score`).

The transformer's import path stays free of TensorFlow and of the kserve package (2.6 s to import);
only the server side loads them.
"""
