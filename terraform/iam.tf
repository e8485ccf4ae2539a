# Google service accounts for the workloads that touch the model bucket, bound through Workload
# Identity to Kubernetes service accounts:
#   model server  <namespace>/model-server                              reads models
#   transformer   <namespace>/transformer                               reads model metadata (drift references)
#   pipeline      <pipeline_namespace>/<pipeline_service_account>        publishes new versions
#   retrain       <namespace>/retrain-trigger                           reads models (is a newer version already there?)
#   decider       <namespace>/model-decider                             reads models, rewrites channels.json (promote, reject, rollback)
# The pipeline's is FleetPulse's own service account in the pipeline namespace (kubernetes.tf), not
# KFP's shared pipeline-runner, so other pipelines' runs get no rights on the bucket.
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

# Publishing reads and lists (versions, channels.json), creates objects under the model's prefix (a
# version's claim, files and metadata.json), and rewrites one object, channels.json. Nothing more: a
# published version cannot be overwritten or deleted by a pipeline run (objectCreator neither
# overwrites nor deletes), and object versioning keeps every earlier channels.json.
locals {
  model_objects = "projects/_/buckets/${google_storage_bucket.models.name}/objects/${var.model_name}/"
}

resource "google_storage_bucket_iam_member" "pipeline_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_storage_bucket_iam_member" "pipeline_creates_model_versions" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.pipeline.email}"
  condition {
    title       = "model-prefix-only"
    description = "Create new objects under gs://${var.model_bucket}/${var.model_name}/ only."
    expression  = "resource.name.startsWith(\"${local.model_objects}\")"
  }
}

# Overwriting an object needs delete on it: granted for channels.json alone.
resource "google_storage_bucket_iam_member" "pipeline_updates_channels" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.pipeline.email}"
  condition {
    title       = "channels-object-only"
    description = "Rewrite gs://${var.model_bucket}/${var.model_name}/channels.json only."
    expression  = "resource.name == \"${local.model_objects}channels.json\""
  }
}

# GKE nodes run as their own account with the logging and monitoring rights a node needs and no data
# access (not the project's default compute account, which is an Editor). Pods never use it: Workload
# Identity gives each its own account.
resource "google_service_account" "nodes" {
  account_id   = "fleetpulse-nodes"
  display_name = "FleetPulse GKE nodes (logs and metrics only)"
}

resource "google_project_iam_member" "nodes_default_node_role" {
  project = var.project_id
  role    = "roles/container.defaultNodeServiceAccount"
  member  = "serviceAccount:${google_service_account.nodes.email}"
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

# The transformer reads each served version's metadata.json (its drift reference), nothing else.
resource "google_service_account" "transformer" {
  account_id   = "fleetpulse-transformer"
  display_name = "FleetPulse transformer (reads model metadata in gs://${var.model_bucket})"
}

resource "google_storage_bucket_iam_member" "transformer_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.transformer.email}"
}

resource "google_service_account_iam_member" "transformer_workload_identity" {
  service_account_id = google_service_account.transformer.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/transformer]"
}

# The promotion decider (fleetpulse models decide) moves channels: it reads every version and rewrites
# channels.json, and creates and deletes nothing else.
resource "google_service_account" "decider" {
  account_id   = "fleetpulse-model-decider"
  display_name = "FleetPulse model decider (rewrites gs://${var.model_bucket}/${var.model_name}/channels.json)"
}

resource "google_storage_bucket_iam_member" "decider_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.decider.email}"
}

resource "google_storage_bucket_iam_member" "decider_updates_channels" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.decider.email}"
  condition {
    title       = "channels-object-only"
    description = "Rewrite gs://${var.model_bucket}/${var.model_name}/channels.json only."
    expression  = "resource.name == \"${local.model_objects}channels.json\""
  }
}

resource "google_service_account_iam_member" "decider_workload_identity" {
  service_account_id = google_service_account.decider.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/model-decider]"
}

# The retrain trigger only asks whether a newer version than a request's exists.
resource "google_service_account" "retrain" {
  account_id   = "fleetpulse-retrain"
  display_name = "FleetPulse retrain trigger (reads gs://${var.model_bucket})"
}

resource "google_storage_bucket_iam_member" "retrain_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.retrain.email}"
}

resource "google_service_account_iam_member" "retrain_workload_identity" {
  service_account_id = google_service_account.retrain.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/retrain-trigger]"
}
