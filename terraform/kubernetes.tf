# What the manifests reference but must not hold: the namespace (Argo CD syncs into it) and the
# Secrets with generated passwords. Values live only in Terraform state and the cluster.
resource "kubernetes_namespace" "fleetpulse" {
  metadata {
    name = var.namespace
    labels = {
      "app.kubernetes.io/part-of"          = "fleetpulse"
      "pod-security.kubernetes.io/enforce" = "baseline"
      "pod-security.kubernetes.io/warn"    = "restricted"
    }
  }
}

resource "random_password" "twin_store_transformer" {
  length  = 32
  special = false
}

resource "random_password" "emqx_dashboard" {
  length  = 24
  special = false
}

# MongoDB Community reads the transformer user's password from here (manifests/base/mongodb.yaml).
resource "kubernetes_secret" "twin_store_transformer_password" {
  metadata {
    name      = "twin-store-transformer-password"
    namespace = kubernetes_namespace.fleetpulse.metadata[0].name
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "app.kubernetes.io/name"    = "mongodb"
    }
  }
  data = {
    password = random_password.twin_store_transformer.result
  }
}

# EMQX's dashboard admin password (manifests/overlays/gke/emqx.yaml).
resource "kubernetes_secret" "emqx_dashboard" {
  metadata {
    name      = "emqx-dashboard"
    namespace = kubernetes_namespace.fleetpulse.metadata[0].name
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "app.kubernetes.io/name"    = "emqx"
    }
  }
  data = {
    password = random_password.emqx_dashboard.result
  }
}

# KFP's pipeline-runner belongs to the Kubeflow install, not to our manifests: annotate it here so its
# pods publish models as the pipeline Google service account.
resource "kubernetes_annotations" "pipeline_runner_workload_identity" {
  api_version = "v1"
  kind        = "ServiceAccount"
  metadata {
    name      = var.pipeline_service_account
    namespace = var.pipeline_namespace
  }
  annotations = {
    "iam.gke.io/gcp-service-account" = google_service_account.pipeline.email
  }
}
