"""Training: Kafka -> TensorFlow I/O -> anomaly models -> evaluation on ground truth -> versioned SavedModels on GCS."""
