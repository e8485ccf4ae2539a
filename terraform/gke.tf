# A regional GKE Standard cluster on a release channel, with Workload Identity, and two autoscaling
# node pools: general (always on) and training (scales to zero between pipeline runs).
resource "google_container_cluster" "fleetpulse" {
  name     = var.cluster_name
  location = var.region

  # Node pools are managed below; the default pool is removed at creation.
  remove_default_node_pool = true
  initial_node_count       = 1

  release_channel {
    channel = var.release_channel
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  networking_mode = "VPC_NATIVE"
  ip_allocation_policy {}

  # Dataplane V2 enforces NetworkPolicy (Strimzi's listener networkPolicyPeers rely on it).
  datapath_provider = "ADVANCED_DATAPATH"

  addons_config {
    gce_persistent_disk_csi_driver_config {
      enabled = true
    }
  }

  maintenance_policy {
    recurring_window {
      start_time = "2026-01-01T01:00:00Z"
      end_time   = "2026-01-01T05:00:00Z"
      recurrence = "FREQ=WEEKLY;BYDAY=SA,SU"
    }
  }

  deletion_protection = var.deletion_protection
}

resource "google_container_node_pool" "general" {
  name     = "general"
  cluster  = google_container_cluster.fleetpulse.id
  location = var.region

  autoscaling {
    min_node_count = var.general_min_nodes_per_zone
    max_node_count = var.general_max_nodes_per_zone
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.general_machine_type
    disk_type       = "pd-balanced"
    disk_size_gb    = 100
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    service_account = google_service_account.nodes.email

    # Pods get Google credentials only through Workload Identity, never the node's.
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot = true
    }
    labels = {
      "fleetpulse.io/pool" = "general"
    }
  }
}

resource "google_container_node_pool" "training" {
  name     = "training"
  cluster  = google_container_cluster.fleetpulse.id
  location = var.region

  autoscaling {
    min_node_count = 0
    max_node_count = var.training_max_nodes_per_zone
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.training_machine_type
    disk_type       = "pd-balanced"
    disk_size_gb    = 100
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    service_account = google_service_account.nodes.email

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot = true
    }
    labels = {
      "fleetpulse.io/pool" = "training"
    }
    # Only pods that tolerate this land here (pipeline steps that ask for the training pool).
    taint {
      key    = "fleetpulse.io/pool"
      value  = "training"
      effect = "NO_SCHEDULE"
    }
  }
}
