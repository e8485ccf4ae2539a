terraform {
  required_version = ">= 1.6"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.33"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }

  # State holds generated passwords: keep it in a private, versioned bucket, e.g.
  #   terraform init -backend-config="bucket=<project>-tfstate" -backend-config="prefix=fleetpulse"
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_client_config" "current" {}

# Talks to the cluster this configuration creates, to make the namespace and its Secrets.
provider "kubernetes" {
  host                   = "https://${google_container_cluster.fleetpulse.endpoint}"
  token                  = data.google_client_config.current.access_token
  cluster_ca_certificate = base64decode(google_container_cluster.fleetpulse.master_auth[0].cluster_ca_certificate)
}
