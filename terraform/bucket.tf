# The model bucket: gs://<model_bucket>/car-anomaly/<int version>/ (fleetpulse/model_store.py).
# Object versioning keeps an overwritten or deleted model recoverable; uniform bucket-level access
# means IAM alone decides who reads or writes (no per-object ACLs).
resource "google_storage_bucket" "models" {
  name     = var.model_bucket
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      with_state                 = "ARCHIVED"
      days_since_noncurrent_time = var.model_noncurrent_versions_kept_days
    }
    action {
      type = "Delete"
    }
  }
}
