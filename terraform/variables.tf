variable "project_id" {
  description = "Google Cloud project that holds the cluster and the model bucket (no default: it is yours)."
  type        = string
}

variable "region" {
  description = "Region of the regional GKE cluster and the bucket."
  type        = string
  default     = "europe-west1"
}

variable "cluster_name" {
  description = "GKE cluster name."
  type        = string
  default     = "fleetpulse"
}

variable "release_channel" {
  description = "GKE release channel: RAPID, REGULAR or STABLE."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "general_machine_type" {
  description = "Machine type of the general pool (Kafka, EMQX, MongoDB, FleetPulse services)."
  type        = string
  default     = "n2-standard-8"
}

variable "general_min_nodes_per_zone" {
  description = "Autoscaling floor of the general pool, per zone."
  type        = number
  default     = 1
}

variable "general_max_nodes_per_zone" {
  description = "Autoscaling ceiling of the general pool, per zone."
  type        = number
  default     = 5
}

variable "training_machine_type" {
  description = "Machine type of the training pool (Kubeflow Pipelines runs); it scales to zero between runs."
  type        = string
  default     = "n2-highmem-8"
}

variable "training_max_nodes_per_zone" {
  description = "Autoscaling ceiling of the training pool, per zone."
  type        = number
  default     = 2
}

variable "model_bucket" {
  description = "GCS bucket for SavedModels (gs://<bucket>/car-anomaly/<version>/). Bucket names are global."
  type        = string
  default     = "fleetpulse-models"
}

variable "model_noncurrent_versions_kept_days" {
  description = "Days an overwritten or deleted object version stays recoverable in the model bucket."
  type        = number
  default     = 30
}

variable "namespace" {
  description = "Kubernetes namespace of the gke overlay (manifests/overlays/gke)."
  type        = string
  default     = "fleetpulse"
}

variable "pipeline_namespace" {
  description = "Namespace where Kubeflow Pipelines runs pipeline pods (standalone KFP: kubeflow)."
  type        = string
  default     = "kubeflow"
}

variable "pipeline_service_account" {
  description = "Kubernetes service account FleetPulse's pipeline runs use (created in pipeline_namespace; the submitter names it)."
  type        = string
  default     = "fleetpulse-pipeline"
}

variable "pipeline_runner_role" {
  description = "Role in pipeline_namespace with the rights a KFP run's pods need (standalone KFP's pipeline-runner Role)."
  type        = string
  default     = "pipeline-runner"
}

variable "model_name" {
  description = "Model whose prefix in the bucket the pipeline may write (gs://<model_bucket>/<model_name>/)."
  type        = string
  default     = "car-anomaly"
}

variable "mqtt_tls_hostnames" {
  description = "DNS names cars use to reach EMQX's TLS listener, besides the in-cluster service names."
  type        = list(string)
  default     = []
}

variable "kafka_cluster_ca_validity_days" {
  description = "Validity of the Kafka cluster CA Terraform makes for Strimzi; replace it (Strimzi's custom-CA renewal) before then."
  type        = number
  default     = 1825
}

variable "deletion_protection" {
  description = "Refuse to destroy the cluster; set false only to tear a test cluster down."
  type        = bool
  default     = true
}
