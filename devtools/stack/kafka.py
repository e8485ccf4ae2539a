"""Apache Kafka, single node in KRaft mode, from its Maven Central jars, run with the machine's Java.

Secured (`stack up --secure`), it has one client listener, SASL_SSL with SCRAM-SHA-512, used by every
client including TensorFlow I/O's bundled librdkafka 1.5.0 (checked: it authenticates and reads every
record; it verifies the CA but cannot verify the host name, as its BoringSSL build fails
``ssl.endpoint.identification.algorithm=https``). Its controller listener takes TLS with a client
certificate only (the broker's own). StandardAuthorizer with no access where no ACL matches, no topic
auto-creation: the stack creates the topics as ``admin`` and grants each service its rights (rights.py).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from pydantic import SecretStr

from devtools.stack.credentials import IdentityStore
from devtools.stack.pki import Pki, ensure_pki
from devtools.stack.rights import ADMIN, KAFKA_BROKER, KAFKA_RIGHTS, KafkaRights
from devtools.stack.service import Service, ensure_dir, write_private
from devtools.stack.settings import KAFKA_VERSION
from fleetpulse.clients import ensure_topics, kafka_config
from fleetpulse.settings import KafkaConnection
from fleetpulse.topics import TOPICS

SASL_MECHANISM = "SCRAM-SHA-512"
SCRAM_MARKER = "scram-formatted"
"""Written when the storage was formatted with the SCRAM users the secured broker starts from."""

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

    @property
    def security_protocol(self) -> str:
        return "SASL_SSL" if self.settings.secure else "PLAINTEXT"

    @property
    def pki(self) -> Pki:
        return Pki(self.settings.pki_dir)

    def connection(self, name: str = ADMIN) -> KafkaConnection:
        """How identity ``name`` reaches this broker (secrets included; everyone is PLAINTEXT when not secured)."""
        if not self.settings.secure:
            return KafkaConnection(bootstrap_servers=self.bootstrap)
        return KafkaConnection(
            bootstrap_servers=self.bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism=SASL_MECHANISM,
            username=name,
            password=SecretStr(IdentityStore(self.settings.identities_dir).password(name)),
            ca_file=str(self.pki.ca_file),
        )

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
        # 0600: secured, the file holds the broker's own SCRAM password (its inter-broker login).
        write_private(
            props,
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{self.host}:{self.settings.kafka_controller_port}",
                    *(self._secured_listeners() if self.settings.secure else self._plaintext_listeners()),
                    f"log.dirs={data}",
                    "num.partitions=3",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=6",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    f"auto.create.topics.enable={'false' if self.settings.secure else 'true'}",
                    "log.retention.check.interval.ms=60000",
                    "num.network.threads=2",
                    "num.io.threads=4",
                    "",
                ]
            ),
        )
        if not (data / "meta.properties").exists():
            self._format(props)
        elif self.settings.secure and not (self.dir / SCRAM_MARKER).exists():
            raise self.fail(
                f"its data ({data}) was formatted without security, so it has no SCRAM users to log in with; "
                "`fleetpulse stack down --wipe` (drops its topics) or another FLEETPULSE_STACK_STATE_DIR"
            )

    def _plaintext_listeners(self) -> list[str]:
        return [
            f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.settings.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
        ]

    def _secured_listeners(self) -> list[str]:
        pki = ensure_pki(self.settings.pki_dir, [self.host])
        broker_password = IdentityStore(self.settings.identities_dir).password(KAFKA_BROKER)
        return [
            f"listeners=CLIENT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.settings.kafka_controller_port}",
            f"advertised.listeners=CLIENT://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SSL",
            "inter.broker.listener.name=CLIENT",
            f"sasl.enabled.mechanisms={SASL_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={SASL_MECHANISM}",
            "listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule "
            f'required username="{KAFKA_BROKER}" password="{broker_password}";',
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={pki.certificate(KAFKA_BROKER).pem_bundle}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={pki.ca_file}",
            "listener.name.controller.ssl.client.auth=required",
            # The controller listener names a client by its certificate's CN, so the broker is
            # "kafka-broker" there as on the client listener, and one super user covers both.
            "ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{ADMIN};User:{KAFKA_BROKER}",
        ]

    def _format(self, props: Path) -> None:
        cluster_id_file = self.dir / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(_cluster_id())
        # `--cluster-id=<id>`: an id may start with "-", which argparse would take for an option.
        argv = self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id_file.read_text().strip()}", "-c", str(props))
        if not self.settings.secure:
            proc = subprocess.run(argv, capture_output=True, text=True)
        else:
            # A KRaft broker's first SCRAM users exist only if the format writes them; the passwords
            # go through a 0600 java @argfile, never the command line another user could read.
            store = IdentityStore(self.settings.identities_dir)
            scram = [f"--add-scram={SASL_MECHANISM}=[name={n},password={store.password(n)}]" for n in (ADMIN, KAFKA_BROKER)]
            argfile = self.dir / "format.args"
            write_private(argfile, "\n".join(argv[1:] + scram) + "\n")
            try:
                proc = subprocess.run([argv[0], f"@{argfile}"], capture_output=True, text=True)
            finally:
                argfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise self.fail(f"kafka-storage format failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
        if self.settings.secure:
            (self.dir / SCRAM_MARKER).touch()

    def argv(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.dir / "server.properties"), heap=self.settings.kafka_heap)

    def round_trip(self) -> None:
        # log_level 0: while the broker starts, librdkafka would print a connection-refused line per retry.
        md = self._admin_client().list_topics(timeout=2)
        if not md.brokers:
            raise RuntimeError("no brokers in metadata")

    def after_ready(self) -> None:
        if not self.settings.secure:
            ensure_topics(self.bootstrap)
            return
        admin = self._admin_client()
        _ensure_scram_users(admin, IdentityStore(self.settings.identities_dir), list(KAFKA_RIGHTS))
        _create_missing_topics(admin)
        grant(admin, KAFKA_RIGHTS)

    def _admin_client(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient(kafka_config(self.connection(ADMIN), log_level=0))

    def endpoint(self) -> dict:
        return {
            "bootstrap_servers": self.bootstrap,
            "version": KAFKA_VERSION,
            # librdkafka's spelling, so a stock client takes them as they are.
            "security_protocol": self.security_protocol,
            "sasl_mechanism": SASL_MECHANISM if self.settings.secure else None,
        }


def _ensure_scram_users(admin, store: IdentityStore, users: list[str]) -> None:
    """Give each of ``users`` its SCRAM-SHA-512 credential unless it has one (admin's comes from the format)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    missing = []
    for user, fut in admin.describe_user_scram_credentials(users).items():
        try:
            fut.result()
        except KafkaException:  # RESOURCE_NOT_FOUND: no credential yet
            missing.append(user)
    if missing:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        upserts = [UserScramCredentialUpsertion(u, info, store.password(u).encode()) for u in missing]
        for fut in admin.alter_user_scram_credentials(upserts).values():
            fut.result()


def _create_missing_topics(admin, timeout: float = 15.0) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(s.name, s.partitions, 1, config=s.kafka_config()) for s in TOPICS.values() if s.name not in existing]
    for fut in (admin.create_topics(new, request_timeout=timeout).values() if new else []):
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def acl_bindings(principal: str, rights: KafkaRights) -> list:
    """The Kafka ACLs that grant ``rights`` to user ``principal`` (all from any host)."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    def allow(kind, name, pattern, op):
        return AclBinding(kind, name, pattern, f"User:{principal}", "*", op, AclPermissionType.ALLOW)

    topic, group, literal, prefixed = ResourceType.TOPIC, ResourceType.GROUP, ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    read, write, describe = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
    return ([allow(topic, t, literal, op) for t in rights.read for op in (read, describe)]
            + [allow(topic, t, literal, op) for t in rights.write for op in (write, describe)]
            + [allow(group, g, prefixed, op) for g in rights.group_prefixes for op in (read, describe)])


def grant(admin, rights: dict[str, KafkaRights]) -> None:
    """Create the ACLs for ``rights`` (principal -> rights); creating an existing ACL is a no-op.

    Never deletes: every test session's `stack up` runs this, and a test may have granted a
    service principal rights on its own topic meanwhile.
    """
    bindings = [b for principal, r in rights.items() for b in acl_bindings(principal, r)]
    for fut in admin.create_acls(bindings).values():
        fut.result()


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64. Like Kafka's Uuid.randomUuid, never one
    starting with "-" (1 in 64 did, and `kafka-storage format -t -abc...` fails on it)."""
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid
