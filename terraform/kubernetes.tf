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

# FleetPulse's own service account for its pipeline runs (the submitter names it), with the rights a KFP
# run's pods need and the pipeline Google service account: KFP's shared pipeline-runner keeps none.
resource "kubernetes_service_account" "pipeline" {
  metadata {
    name      = var.pipeline_service_account
    namespace = var.pipeline_namespace
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "app.kubernetes.io/name"    = "pipeline"
    }
    annotations = {
      "iam.gke.io/gcp-service-account" = google_service_account.pipeline.email
    }
  }
}

resource "kubernetes_role_binding" "pipeline_runs_workflows" {
  metadata {
    name      = "${var.pipeline_service_account}-runner"
    namespace = var.pipeline_namespace
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = var.pipeline_runner_role
  }
  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account.pipeline.metadata[0].name
    namespace = var.pipeline_namespace
  }
}

# Strimzi's cluster CA (tls.tf), as Strimzi's custom-CA guide lays the two Secrets out. Strimzi adds
# its PKCS #12 forms to the certificate's Secret; a renewal replaces these resources (terraform apply -replace).
resource "kubernetes_secret" "kafka_cluster_ca_cert" {
  metadata {
    name      = "fleetpulse-cluster-ca-cert"
    namespace = kubernetes_namespace.fleetpulse.metadata[0].name
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "strimzi.io/kind"           = "Kafka"
      "strimzi.io/cluster"        = "fleetpulse"
    }
    annotations = {
      "strimzi.io/ca-cert-generation" = "0"
    }
  }
  data = {
    "ca.crt" = tls_self_signed_cert.kafka_cluster_ca.cert_pem
  }
  lifecycle {
    ignore_changes = [data]
  }
}

resource "kubernetes_secret" "kafka_cluster_ca_key" {
  metadata {
    name      = "fleetpulse-cluster-ca"
    namespace = kubernetes_namespace.fleetpulse.metadata[0].name
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "strimzi.io/kind"           = "Kafka"
      "strimzi.io/cluster"        = "fleetpulse"
    }
    annotations = {
      "strimzi.io/ca-key-generation" = "0"
    }
  }
  data = {
    "ca.key" = tls_private_key.kafka_cluster_ca.private_key_pem_pkcs8
  }
}

# The training KafkaUser's password (manifests/base/kafka-users.yaml reads it from here), and the same
# password with the cluster CA in the pipeline's namespace, where the training steps run.
resource "random_password" "kafka_training" {
  length  = 32
  special = false
}

resource "kubernetes_secret" "training_kafka_password" {
  metadata {
    name      = "training-kafka-password"
    namespace = kubernetes_namespace.fleetpulse.metadata[0].name
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "app.kubernetes.io/name"    = "training"
    }
  }
  data = {
    password = random_password.kafka_training.result
  }
}

resource "kubernetes_secret" "pipeline_training_kafka" {
  metadata {
    name      = "fleetpulse-training-kafka"
    namespace = var.pipeline_namespace
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "app.kubernetes.io/name"    = "training"
    }
  }
  data = {
    username = "training"
    password = random_password.kafka_training.result
    "ca.crt" = tls_self_signed_cert.kafka_cluster_ca.cert_pem
  }
}

# MQTT identities of the services (EMQX's built-in database imports them at start: emqx-mqtt-users);
# the cars' come from the fleet's provisioning, not from here.
resource "random_password" "mqtt" {
  for_each = toset(["bridge", "simulator"])
  length   = 32
  special  = false
}

resource "kubernetes_secret" "mqtt_bridge" {
  metadata {
    name      = "mqtt-bridge"
    namespace = kubernetes_namespace.fleetpulse.metadata[0].name
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "app.kubernetes.io/name"    = "bridge"
    }
  }
  data = {
    password = random_password.mqtt["bridge"].result
  }
}

resource "kubernetes_secret" "mqtt_simulator" {
  metadata {
    name      = "mqtt-simulator"
    namespace = kubernetes_namespace.fleetpulse.metadata[0].name
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "app.kubernetes.io/name"    = "simulator"
    }
  }
  data = {
    password = random_password.mqtt["simulator"].result
  }
}

resource "kubernetes_secret" "emqx_mqtt_users" {
  metadata {
    name      = "emqx-mqtt-users"
    namespace = kubernetes_namespace.fleetpulse.metadata[0].name
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "app.kubernetes.io/name"    = "emqx"
    }
  }
  data = {
    "users.csv" = join("\n", concat(["user_id,password,is_superuser"], [for name, pw in random_password.mqtt : "${name},${pw.result},false"]))
  }
}

# EMQX's TLS listener (tls.tf); cars trust mqtt_ca_certificate (an output).
resource "kubernetes_secret" "emqx_tls" {
  metadata {
    name      = "emqx-tls"
    namespace = kubernetes_namespace.fleetpulse.metadata[0].name
    labels = {
      "app.kubernetes.io/part-of" = "fleetpulse"
      "app.kubernetes.io/name"    = "emqx"
    }
  }
  data = {
    "ca.crt"  = tls_self_signed_cert.mqtt_ca.cert_pem
    "tls.crt" = tls_locally_signed_cert.emqx.cert_pem
    "tls.key" = tls_private_key.emqx.private_key_pem
  }
}
