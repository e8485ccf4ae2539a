"""TensorFlow I/O 0.37.1 (bundled librdkafka 1.5.0) trains from the secured Kafka: SASL_SSL with SCRAM-SHA-512.

TF-IO retries an authentication or TLS failure forever and yields nothing, so the check counts the
records that arrive, in a subprocess with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from devtools.stack.kafka import KafkaService, grant
from devtools.stack.rights import KafkaRights
from fleetpulse.clients import kafka_config

pytest.importorskip("tensorflow_io")

RECORDS = 3000
READER = """
import json, sys, uuid
from tensorflow_io.python.ops import core_ops
args = json.load(sys.stdin)
res = core_ops.io_kafka_readable_init(args["topic"], 0, offset=0, metadata=args["config"], shared_name=uuid.uuid4().hex)
values = []
for start in range(0, args["records"], 1000):
    messages, keys = core_ops.io_kafka_readable_read(res, start=start, stop=min(start + 1000, args["records"]))
    values += [m.decode() for m in messages.numpy()]
print(json.dumps(values))
"""


@pytest.mark.slow
def test_tfio_reads_every_record_over_sasl_ssl_as_training(secure_settings, credentials, unique):
    kafka = KafkaService(secure_settings)
    topic = f"tfio-{unique}"
    admin_config = kafka_config(kafka.connection("admin"))
    admin = AdminClient(admin_config)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    grant(admin, {"training": KafkaRights(read=(topic,))})
    producer = Producer(admin_config)
    for i in range(RECORDS):
        producer.produce(topic, key=b"car", value=str(i).encode())
    assert producer.flush(30) == 0

    training = kafka.connection("training")
    config = [f"{k}={v}" for k, v in kafka_config(training).items()]
    # TF-IO's reader joins librdkafka's default group unless told; training's groups start fleetpulse-train.
    config += ["group.id=fleetpulse-train-tfio", "enable.partition.eof=false", "fetch.wait.max.ms=5"]
    try:
        # The config holds training's password: through stdin, never the command line.
        proc = subprocess.run([sys.executable, "-c", READER], input=json.dumps({"topic": topic, "config": config, "records": RECORDS}),
                              capture_output=True, text=True, timeout=180, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        pytest.fail("TF-IO read nothing within 180 s: it retries a failed SASL_SSL login silently")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [str(i) for i in range(RECORDS)]
