"""A stock paho MQTT 5 client for a given connection: TLS with the stack's CA and a login when secured."""

from __future__ import annotations

from fleetpulse.settings import MqttConnection


def paho_client(conn: MqttConnection, client_id: str = ""):
    """A paho client set up for ``conn`` (not connected); ``connect_to(client, conn)`` connects it to the first broker."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if conn.username:
        client.username_pw_set(conn.username, conn.password.get_secret_value() if conn.password else None)
    if conn.tls:
        client.tls_set(ca_certs=conn.ca_file)
    return client


def connect_to(client, conn: MqttConnection) -> None:
    host, port = conn.endpoints[0]
    client.connect(host, port)
