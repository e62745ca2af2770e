"""Fetching the stack's programs into the shared cache (Maven Central and the Go module proxy).

Kafka jars and Apicurio come from Maven Central, Toxiproxy from the Go module proxy. Every step is
idempotent and guarded by a file lock, so clones
sharing `~/.cache/keel` never download twice or trample each other.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.local.processes import run_checked
from keel.errors import ConfigurationError

__all__ = ["JavaRuntime", "ensure_apicurio", "ensure_kafka_libs", "ensure_toxiproxy", "find_java"]

# The dependency plugin must be named with its version: Maven 3.8.7 otherwise resolves plugin 2.8.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

_KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.keel.stack</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <!-- Kafka 4.x logs through slf4j-api 1.7 and ships no binding: without these the broker is silent. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


@contextmanager
def _cache_lock(cache: Path, name: str) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ConfigurationError(f"`{tool}` is not on PATH; {hint}")
    return path


def ensure_kafka_libs(cache: Path, kafka_version: str, log4j_version: str, log_file: Path) -> Path:
    """The folder of Kafka's runtime jars (plus a log4j2 binding), downloaded once per version."""
    libs = cache / f"kafka-{kafka_version}" / "libs"
    marker = libs.parent / ".complete"
    if marker.exists():
        return libs
    with _cache_lock(cache, f"kafka-{kafka_version}"):
        if marker.exists():
            return libs
        mvn = _require("mvn", "install Maven (apt-get install maven)")
        pom = libs.parent / "pom.xml"
        libs.mkdir(parents=True, exist_ok=True)
        pom.write_text(_KAFKA_POM.format(kafka=kafka_version, log4j=log4j_version))
        run_checked(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom),
                f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            what=f"downloading Kafka {kafka_version} from Maven Central",
            log_file=log_file,
        )
        stray = re.compile(r"(slf4j-(simple|reload4j|log4j12)|logback-classic)")
        bindings = [p.name for p in libs.glob("*.jar") if stray.match(p.name)]
        if bindings:
            raise ConfigurationError(f"stray slf4j bindings among Kafka's jars: {bindings}")
        marker.touch()
    return libs


@dataclass(frozen=True)
class JavaRuntime:
    """A JDK on this machine and its feature version."""

    java: Path
    feature: int


def _java_feature(home: Path) -> int | None:
    release = home / "release"
    if not release.exists():
        return None
    match = re.search(r'JAVA_VERSION="(\d+)', release.read_text())
    return int(match.group(1)) if match else None


def find_java(minimum: int, preferred_home: Path | None = None) -> JavaRuntime | None:
    """The newest JDK of at least `minimum`: `preferred_home`, then /usr/lib/jvm/*, then `java` on PATH."""
    candidates: list[Path] = []
    if preferred_home is not None:
        candidates.append(preferred_home)
    jvm_root = Path("/usr/lib/jvm")
    if jvm_root.is_dir():
        candidates.extend(sorted(jvm_root.iterdir()))
    found: list[JavaRuntime] = []
    for home in candidates:
        feature = _java_feature(home)
        java = home / "bin" / "java"
        if feature is not None and feature >= minimum and java.exists():
            found.append(JavaRuntime(java, feature))
    if not found:
        on_path = shutil.which("java")
        if on_path is not None:
            feature = _java_feature(Path(on_path).resolve().parent.parent)
            if feature is not None and feature >= minimum:
                return JavaRuntime(Path(on_path), feature)
        return None
    if preferred_home is not None and found[0].java.parent.parent == preferred_home:
        return found[0]
    return max(found, key=lambda runtime: runtime.feature)


def ensure_apicurio(cache: Path, version: str, log_file: Path) -> Path:
    """The unpacked Apicurio Registry `all` distribution of `version` (a Quarkus app folder)."""
    home = cache / f"apicurio-{version}"
    marker = home / ".complete"
    if marker.exists():
        return home
    with _cache_lock(cache, f"apicurio-{version}"):
        if marker.exists():
            return home
        mvn = _require("mvn", "install Maven (apt-get install maven)")
        downloads = cache / "downloads"
        tarball = downloads / f"apicurio-registry-app-{version}-all.tar.gz"
        if not tarball.exists():
            run_checked(
                [
                    mvn,
                    "-B",
                    "-q",
                    f"{_DEPENDENCY_PLUGIN}:copy",
                    f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
                    f"-DoutputDirectory={downloads}",
                ],
                what=f"downloading Apicurio Registry {version} from Maven Central",
                log_file=log_file,
            )
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        with tarfile.open(tarball) as archive:
            archive.extractall(home, filter="data")
        marker.touch()
    return home


def apicurio_launch_jar(home: Path) -> Path:
    """The jar to run: `quarkus-run.jar` (3.1+) or the `-runner.jar` of 3.0.x."""
    for pattern in ("quarkus-run.jar", "*-runner.jar", "*/quarkus-run.jar", "*/*-runner.jar"):
        matches = sorted(home.glob(pattern))
        if matches:
            return matches[0]
    raise ConfigurationError(f"no quarkus-run.jar or *-runner.jar under {home}")


def ensure_toxiproxy(cache: Path, version: str, log_file: Path) -> Path:
    """The `toxiproxy-server` binary of `version`, built with `go install` from the Go module proxy."""
    binary = cache / "bin" / f"toxiproxy-server-{version}"
    if binary.exists():
        return binary
    with _cache_lock(cache, f"toxiproxy-{version}"):
        if binary.exists():
            return binary
        go = _require("go", "install Go")
        gobin = cache / "gobin" / version
        gobin.mkdir(parents=True, exist_ok=True)
        run_checked(
            [go, "install", f"github.com/Shopify/toxiproxy/v2/cmd/server@{version}"],
            what=f"building Toxiproxy {version} with go install",
            log_file=log_file,
            env={"GOBIN": str(gobin), "GOFLAGS": "-mod=mod"},
        )
        binary.parent.mkdir(parents=True, exist_ok=True)
        # `go install` names the binary after its package folder (`server`); rename it to say what it is.
        shutil.copy2(gobin / "server", binary)
    return binary
