"""The local stack: Kafka, Mosquitto, FerretDB and fake-gcs-server on loopback, started by the project."""
