# Certificate authorities Terraform makes, so their certificates can go to every namespace that needs
# them (kubernetes.tf writes the Secrets); the keys stay in Terraform state and the cluster.

# Strimzi's cluster CA (manifests/base/kafka.yaml: clusterCa.generateCertificateAuthority false). The
# training steps run in the pipeline's namespace and verify the brokers with it there.
resource "tls_private_key" "kafka_cluster_ca" {
  algorithm = "RSA"
  rsa_bits  = 4096
}

resource "tls_self_signed_cert" "kafka_cluster_ca" {
  private_key_pem       = tls_private_key.kafka_cluster_ca.private_key_pem
  is_ca_certificate     = true
  validity_period_hours = var.kafka_cluster_ca_validity_days * 24
  allowed_uses          = ["cert_signing", "crl_signing"]

  subject {
    common_name  = "fleetpulse-kafka-cluster-ca"
    organization = "FleetPulse"
  }
}

# The CA cars trust for EMQX's TLS listener, and the listener's certificate. EC P-256: a handshake
# costs a fraction of RSA's, and 100,000 cars reconnect at once after a broker restart.
resource "tls_private_key" "mqtt_ca" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "mqtt_ca" {
  private_key_pem       = tls_private_key.mqtt_ca.private_key_pem
  is_ca_certificate     = true
  validity_period_hours = 10 * 365 * 24
  allowed_uses          = ["cert_signing", "crl_signing"]

  subject {
    common_name  = "fleetpulse-mqtt-ca"
    organization = "FleetPulse"
  }
}

resource "tls_private_key" "emqx" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "emqx" {
  private_key_pem = tls_private_key.emqx.private_key_pem
  dns_names = concat([
    "emqx-listeners",
    "emqx-listeners.${var.namespace}.svc",
    "emqx-listeners.${var.namespace}.svc.cluster.local",
  ], var.mqtt_tls_hostnames)

  subject {
    common_name  = "emqx-listeners.${var.namespace}.svc"
    organization = "FleetPulse"
  }
}

resource "tls_locally_signed_cert" "emqx" {
  cert_request_pem      = tls_cert_request.emqx.cert_request_pem
  ca_private_key_pem    = tls_private_key.mqtt_ca.private_key_pem
  ca_cert_pem           = tls_self_signed_cert.mqtt_ca.cert_pem
  validity_period_hours = 825 * 24
  early_renewal_hours   = 30 * 24
  allowed_uses          = ["digital_signature", "key_encipherment", "server_auth"]
}
