# Google service accounts for the two workloads that touch the model bucket, each bound through
# Workload Identity to one Kubernetes service account:
#   model server  <namespace>/model-server                         reads models
#   pipeline      <pipeline_namespace>/<pipeline_service_account>  publishes new versions
resource "google_service_account" "model_server" {
  account_id   = "fleetpulse-model-server"
  display_name = "FleetPulse model server (reads gs://${var.model_bucket})"
}

resource "google_service_account" "pipeline" {
  account_id   = "fleetpulse-pipeline"
  display_name = "FleetPulse training pipeline (publishes to gs://${var.model_bucket})"
}

resource "google_storage_bucket_iam_member" "model_server_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.model_server.email}"
}

# objectAdmin, not objectCreator: publishing lists existing versions and claims the next one with a
# create-if-absent precondition, which needs read and list as well as create.
resource "google_storage_bucket_iam_member" "pipeline_writes_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_service_account_iam_member" "model_server_workload_identity" {
  service_account_id = google_service_account.model_server.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/model-server]"
}

resource "google_service_account_iam_member" "pipeline_workload_identity" {
  service_account_id = google_service_account.pipeline.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.pipeline_namespace}/${var.pipeline_service_account}]"
}
