output "cluster_name" {
  description = "GKE cluster name."
  value       = google_container_cluster.fleetpulse.name
}

output "get_credentials" {
  description = "Command that points kubectl at the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.fleetpulse.name} --region ${var.region} --project ${var.project_id}"
}

output "model_bucket_uri" {
  description = "Where the pipeline publishes and the model server reads SavedModels."
  value       = "gs://${google_storage_bucket.models.name}/car-anomaly"
}

output "model_server_gsa_email" {
  description = "Goes into manifests/overlays/gke/workload-identity.yaml (iam.gke.io/gcp-service-account)."
  value       = google_service_account.model_server.email
}

output "pipeline_gsa_email" {
  description = "Google service account KFP pipeline pods act as."
  value       = google_service_account.pipeline.email
}

output "namespace" {
  description = "Namespace created for the gke overlay."
  value       = kubernetes_namespace.fleetpulse.metadata[0].name
}

output "mqtt_ca_certificate" {
  description = "The CA cars trust for EMQX's TLS listener (public; the key stays in Terraform state)."
  value       = tls_self_signed_cert.mqtt_ca.cert_pem
}

output "pipeline_service_account" {
  description = "Kubernetes service account the pipeline submitter names for FleetPulse's runs (PIPELINE_SERVICE_ACCOUNT)."
  value       = kubernetes_service_account.pipeline.metadata[0].name
}

output "transformer_gsa_email" {
  description = "Annotate the transformer's Kubernetes service account with this (overlays/gke/workload-identity.yaml)."
  value       = google_service_account.transformer.email
}

output "decider_gsa_email" {
  description = "Annotate the model-decider's Kubernetes service account with this (overlays/gke/workload-identity.yaml)."
  value       = google_service_account.decider.email
}

output "retrain_gsa_email" {
  description = "Annotate the retrain-trigger's Kubernetes service account with this (overlays/gke/workload-identity.yaml)."
  value       = google_service_account.retrain.email
}
