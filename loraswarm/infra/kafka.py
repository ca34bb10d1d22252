"""A single-node KRaft Kafka broker assembled from Maven Central artifacts.

`mvn dependency:copy-dependencies` on kafka/pom.xml puts the broker and its runtime dependencies
into `<home>/kafka-<version>/libs` once; the storage is formatted once with a random cluster id;
the broker runs as `java -cp 'libs/*' kafka.Kafka server.properties`.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from loraswarm.infra.process import (
    ManagedProcess,
    ensure_port_free,
    port_open,
    require_tool,
    run_build,
    wait_until,
)
from loraswarm.shared.settings import InfraSettings

POM = Path(__file__).parent / "kafka" / "pom.xml"


def _libs(infra: InfraSettings) -> Path:
    return infra.home / f"kafka-{infra.kafka_version}" / "libs"


def process(infra: InfraSettings) -> ManagedProcess:
    return ManagedProcess("kafka", infra.run_dir, infra.logs_dir)


def installed(infra: InfraSettings) -> bool:
    libs = _libs(infra)
    return libs.is_dir() and any(libs.glob("kafka_2.13-*.jar"))


def install(infra: InfraSettings) -> None:
    if installed(infra):
        return
    require_tool(
        "java", "to run Kafka", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)"
    )
    mvn = require_tool(
        "mvn", "to fetch Kafka from Maven Central", "install Maven (e.g. `apt-get install maven`)"
    )
    libs = _libs(infra)
    tmp = libs.with_name("libs.partial")
    run_build(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-Dkafka.version={infra.kafka_version}",
            f"-DoutputDirectory={tmp}",
        ],
        log=infra.logs_dir / "kafka-install.log",
        what="fetching Kafka from Maven Central",
    )
    tmp.rename(libs)  # only a complete download counts as installed


def _config(infra: InfraSettings, data: Path) -> str:
    port, ctrl = infra.kafka_port, infra.kafka_controller_port
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{ctrl}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctrl}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            # Consumers join at once instead of waiting 3 s for others: tests and restarts are quick.
            "group.initial.rebalance.delay.ms=0",
            # Room for a dead letter that carries an oversized message whole (base64).
            "message.max.bytes=16777216",
            "replica.fetch.max.bytes=16777216",
            "auto.create.topics.enable=true",
            "log.retention.hours=24",
            "",
        ]
    )


def up(infra: InfraSettings) -> str:
    proc = process(infra)
    if proc.running() and port_open(infra.kafka_port):
        return f"kafka already running on 127.0.0.1:{infra.kafka_port}"
    install(infra)
    java = require_tool(
        "java", "to run Kafka", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)"
    )
    ensure_port_free(infra.kafka_port, "Kafka")
    ensure_port_free(infra.kafka_controller_port, "Kafka's controller")
    data = infra.run_dir / "kafka-data"
    config = infra.run_dir / "kafka-server.properties"
    infra.run_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(_config(infra, data))
    classpath = f"{_libs(infra)}/*"
    env = {"KAFKA_HEAP_OPTS": f"-Xmx{infra.kafka_heap}"}
    jvm = [
        java,
        f"-Xmx{infra.kafka_heap}",
        "-Xms256m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{_log4j(infra)}",
        "-cp",
        classpath,
    ]
    if not (data / "meta.properties").exists():
        run_build(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config), "-g"],
            log=infra.logs_dir / "kafka-format.log",
            env=env,
            what="formatting Kafka's storage",
        )
    child = proc.start([*jvm, "kafka.Kafka", str(config)], env=env)
    wait_until(
        lambda: port_open(infra.kafka_port) and _metadata_ok(infra),
        timeout_s=infra.ready_timeout_s,
        proc=proc,
        child=child,
        what="Kafka",
    )
    return f"kafka ready on 127.0.0.1:{infra.kafka_port} (log: {proc.log_file})"


def _cluster_id() -> str:
    """A random cluster id as Kafka writes them (URL-safe base64 of 16 bytes), never one that
    starts with "-": the storage tool would read it as an option and refuse to format (one id in
    64 did; Kafka's own `Uuid.randomUuid` draws again for the same reason)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _log4j(infra: InfraSettings) -> Path:
    path = infra.run_dir / "kafka-log4j.properties"
    path.write_text(
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=WARN\n"
    )
    return path


def _metadata_ok(infra: InfraSettings) -> bool:
    """The broker answers a metadata request: it has a controller and accepts clients."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def check() -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{infra.kafka_port}", request_timeout_ms=3000
        )
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    try:
        return asyncio.run(check())
    except RuntimeError:  # called from a running loop: fall back to the port check
        return True


def down(infra: InfraSettings) -> str:
    return "kafka stopped" if process(infra).stop() else "kafka was not running"


def status(infra: InfraSettings) -> str:
    proc = process(infra)
    if proc.running():
        health = "healthy" if port_open(infra.kafka_port) else "starting/unhealthy"
        return f"kafka: running (pid {proc.pid()}), {health}, 127.0.0.1:{infra.kafka_port}"
    return f"kafka: stopped{'' if installed(infra) else ' (not installed yet)'}"


def bootstrap(infra: InfraSettings) -> str:
    return f"127.0.0.1:{infra.kafka_port}"
