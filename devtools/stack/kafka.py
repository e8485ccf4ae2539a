"""Apache Kafka, single node in KRaft mode, from its Maven Central jars, run with the machine's Java."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from devtools.stack.service import Service, ensure_dir
from devtools.stack.settings import KAFKA_VERSION
from fleetpulse.clients import ensure_topics

ASSETS = resources.files("devtools.stack") / "assets" / "kafka"


class KafkaService(Service):
    name = "kafka"

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    def ports(self) -> list[int]:
        return [self.settings.kafka_port, self.settings.kafka_controller_port]

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def marker(self) -> str:
        return str(self.dir / "server.properties")

    @property
    def libs(self) -> Path:
        return self.settings.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"

    def install(self) -> None:
        done = self.libs.parent / ".complete"
        if done.exists():
            return
        if shutil.which("java") is None:
            raise self.fail("Java is not installed; install a JDK 17 (apt-get install -y openjdk-17-jre-headless)")
        if shutil.which("mvn") is None:
            raise self.fail("Maven is not installed; install it (apt-get install -y maven) to fetch the Kafka jars")
        ensure_dir(self.dir)
        pom = self.libs.parent / "pom.xml"
        ensure_dir(self.libs.parent)
        pom.write_bytes((ASSETS / "pom.xml").read_bytes())
        proc = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={self.libs}"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            (self.dir / "install.log").write_text(proc.stdout + proc.stderr)
            raise self.fail(f"could not fetch Kafka {KAFKA_VERSION} jars from Maven Central (see {self.dir / 'install.log'})")
        done.touch()

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def prepare(self) -> None:
        ensure_dir(self.dir)
        data = self.dir / "data"
        props = self.dir / "server.properties"
        (self.dir / "log4j.properties").write_bytes((ASSETS / "log4j.properties").read_bytes())
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{self.host}:{self.settings.kafka_controller_port}",
                    f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.settings.kafka_controller_port}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=3",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=6",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "log.retention.check.interval.ms=60000",
                    "num.network.threads=2",
                    "num.io.threads=4",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            cluster_id_file = self.dir / "cluster.id"
            if not cluster_id_file.exists():
                cluster_id_file.write_text(_cluster_id())
            proc = subprocess.run(
                # `--cluster-id=<id>`: an id may start with "-", which argparse would take for an option.
                self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id_file.read_text().strip()}", "-c", str(props)),
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise self.fail(f"kafka-storage format failed: {(proc.stdout + proc.stderr).strip()[-300:]}")

    def argv(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.dir / "server.properties"), heap=self.settings.kafka_heap)

    def round_trip(self) -> None:
        from confluent_kafka.admin import AdminClient

        # log_level 0: while the broker starts, librdkafka would print a connection-refused line per retry.
        md = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=2)
        if not md.brokers:
            raise RuntimeError("no brokers in metadata")

    def after_ready(self) -> None:
        ensure_topics(self.bootstrap)

    def endpoint(self) -> dict:
        return {"bootstrap_servers": self.bootstrap, "version": KAFKA_VERSION}


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64. Like Kafka's Uuid.randomUuid, never one
    starting with "-" (1 in 64 did, and `kafka-storage format -t -abc...` fails on it)."""
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid
