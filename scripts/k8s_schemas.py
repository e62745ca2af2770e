"""Regenerate the JSON schemas kubeconform validates `deploy/k8s/` against, from package registries only.

kubeconform normally downloads its schemas from GitHub, which these machines cannot reach. This script builds
the same per-kind layout from sources that come through package registries:

* core Kubernetes kinds: `api/openapi-spec/swagger.json` inside the Go module zip of `k8s.io/kubernetes`
  (`go mod download`), converted like openapi2jsonschema's "standalone-strict" flavour: one file per kind
  with the definitions it reaches, `additionalProperties: false` on every object that lists its properties;
* CloudNativePG: the CRDs under `config/crd/bases/` of the `github.com/cloudnative-pg/cloudnative-pg` module;
* Strimzi: its CRDs are generated from Java classes, and both the classes (`io.strimzi:api`) and the
  generator (`io.strimzi:crd-generator`) are on Maven Central. The script copies them with their runtime
  dependencies into `~/.cache/keel/strimzi-crd-generator-<version>/` once, then runs the generator as the
  `api` module's own pom (inside the jar) does for a release; the output is that release's
  `install/cluster-operator/04*-Crd-*.yaml`. crd-generator 1.x needs Java 21+.

Only the kinds the manifests use are written, so the committed data stays small; `SOURCES.json` records
where each came from. Run: `.venv/bin/python scripts/k8s_schemas.py` (or `make k8s-schemas`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from deploy.local.downloads import find_java

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFESTS = ROOT / "deploy" / "k8s"
DEFAULT_OUT = DEFAULT_MANIFESTS / "schemas"
KUBERNETES_VERSION = "v1.34.2"
CLOUDNATIVE_PG_VERSION = "v1.28.0"
STRIMZI_VERSION = "1.2.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "keel"
# Maven 3.8 resolves an unversioned `dependency:` to plugin 2.8; name the one we mean.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_STRIMZI_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.keel.k8s</groupId><artifactId>strimzi-crd-generator</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>io.strimzi</groupId><artifactId>api</artifactId><version>{version}</version></dependency>
    <dependency><groupId>io.strimzi</groupId><artifactId>crd-generator</artifactId><version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""
# The CrdGenerator call of the `generate-crd-co-install-v1` execution in io.strimzi:api's pom
# (META-INF/maven/io.strimzi/api/pom.xml): the flags, then each CRD's class and its release file name.
_STRIMZI_GENERATOR_FLAGS = (
    "--label", "app:strimzi", "--label", "strimzi.io/crd-install:true", "--target-kube", "1.16+",
    "--crd-api-version", "v1", "--api-versions", "v1", "--storage-version", "v1", "--yaml",
)  # fmt: skip
_STRIMZI_CRDS = {
    "kafka.Kafka": "040-Crd-kafka.yaml",
    "connect.KafkaConnect": "041-Crd-kafkaconnect.yaml",
    "podset.StrimziPodSet": "042-Crd-strimzipodset.yaml",
    "topic.KafkaTopic": "043-Crd-kafkatopic.yaml",
    "user.KafkaUser": "044-Crd-kafkauser.yaml",
    "nodepool.KafkaNodePool": "045-Crd-kafkanodepool.yaml",
    "bridge.KafkaBridge": "046-Crd-kafkabridge.yaml",
    "connector.KafkaConnector": "047-Crd-kafkaconnector.yaml",
    "mirrormaker2.KafkaMirrorMaker2": "048-Crd-kafkamirrormaker2.yaml",
    "rebalance.KafkaRebalance": "049-Crd-kafkarebalance.yaml",
}
NOT_MANIFESTS = {"kustomization.yaml"}

# Kubernetes serialises these as strings but accepts numbers in YAML (`cpu: 1`, `targetPort: 8080`).
_SPECIAL_DEFINITIONS = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"oneOf": [{"type": "string"}, {"type": "number"}]},
}
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_VALUES = ("additionalProperties", "items", "not", "additionalItems")

GroupVersionKind = tuple[str, str, str]


def manifest_documents(manifests: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every YAML document of every manifest under `manifests` (schemas/ and kustomization.yaml excluded)."""
    for path in sorted(manifests.rglob("*.yaml")):
        if path.name in NOT_MANIFESTS or "schemas" in path.relative_to(manifests).parts:
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict):
                yield path, document


def kinds_used(manifests: Path) -> set[GroupVersionKind]:
    """(group, version, kind) of every resource in the manifests; group is "" for the core API."""
    used = set()
    for path, document in manifest_documents(manifests):
        api_version, kind = document.get("apiVersion"), document.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            raise SystemExit(f"{path}: a document without apiVersion and kind")
        group, _, version = api_version.rpartition("/")
        used.add((group, version, kind))
    return used


def core_file_name(group: str, version: str, kind: str) -> str:
    """The name kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json` gives a built-in kind."""
    suffix = f"-{group.split('.', maxsplit=1)[0].lower()}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def crd_file_name(group: str, version: str, kind: str) -> str:
    """The name kubeconform's `{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json` gives a custom kind."""
    return f"{group}/{kind.lower()}_{version}.json"


def tighten(schema: Any) -> Any:
    """A copy of an OpenAPI schema as strict JSON schema: no prose, closed objects, int-or-string unions."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string" or (
        schema.get("x-kubernetes-int-or-string") and not any(key in schema for key in _SCHEMA_LISTS)
    ):
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-") or (key == "description" and isinstance(value, str)):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            result[key] = {name: tighten(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            result[key] = [tighten(sub) for sub in value]
        elif key in _SCHEMA_VALUES:
            result[key] = [tighten(sub) for sub in value] if isinstance(value, list) else tighten(value)
        else:
            result[key] = copy.deepcopy(value)
    if schema.get("nullable") is True and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
        result.pop("nullable")
    preserves_unknown = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in result and "additionalProperties" not in result and not preserves_unknown:
        result["additionalProperties"] = False
    return result


def _references(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        reference = schema.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/definitions/"):
            yield reference.removeprefix("#/definitions/")
        for value in schema.values():
            yield from _references(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _references(value)


def core_schemas(swagger: dict[str, Any], wanted: Iterable[GroupVersionKind]) -> dict[str, dict[str, Any]]:
    """Standalone strict schemas of the wanted built-in kinds, by kubeconform file name."""
    definitions: dict[str, Any] = swagger["definitions"]
    by_gvk: dict[GroupVersionKind, str] = {}
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            by_gvk[(gvk["group"], gvk["version"], gvk["kind"])] = name
    files = {}
    for gvk in sorted(wanted):
        name = by_gvk[gvk]
        reached, pending = set(), [name]
        while pending:
            current = pending.pop()
            if current in reached:
                continue
            reached.add(current)
            pending.extend(_references(definitions[current]))
        schema = tighten(definitions[name])
        schema["definitions"] = {
            ref: copy.deepcopy(_SPECIAL_DEFINITIONS[ref]) if ref in _SPECIAL_DEFINITIONS else tighten(definitions[ref])
            for ref in sorted(reached - {name})
        }
        files[core_file_name(*gvk)] = schema
    return files


def crd_schemas(crd_files: Iterable[Path]) -> dict[GroupVersionKind, dict[str, Any]]:
    """Strict schemas of every served version of every CRD in the files."""
    schemas = {}
    for path in crd_files:
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
                continue
            spec = document["spec"]
            for version in spec["versions"]:
                openapi = version.get("schema", {}).get("openAPIV3Schema")
                if openapi is not None and version.get("served", True):
                    schemas[(spec["group"], version["name"], spec["names"]["kind"])] = tighten(openapi)
    return schemas


def go_module_dir(module: str, version: str) -> Path:
    """Folder of a Go module version in the module cache, downloaded through the Go module proxy if missing."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit(f"`go` is needed to fetch {module}@{version} from the Go module proxy")
    result = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"], capture_output=True, check=False)
    info = json.loads(result.stdout or b"{}")
    if result.returncode != 0 or "Dir" not in info:
        raise SystemExit(f"go mod download {module}@{version} failed: {info.get('Error') or result.stderr.decode()}")
    return Path(info["Dir"])


def yaml_files(path: Path) -> list[Path]:
    """A file, or the YAML files of a folder."""
    return sorted(path.glob("*.yaml")) if path.is_dir() else [path]


def strimzi_generator_jars(version: str, cache: Path = CACHE) -> Path:
    """Folder of io.strimzi:api, io.strimzi:crd-generator and their runtime jars, copied from Maven Central once."""
    libs = cache / f"strimzi-crd-generator-{version}"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SystemExit(
            f"`mvn` is needed to fetch io.strimzi:api:{version} from Maven Central (apt-get install maven)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    # Built beside the final folder and renamed into place, so a run that dies leaves no half-filled cache.
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{libs.name}-") as staging:
        pom = Path(staging) / "pom.xml"
        pom.write_text(_STRIMZI_POM.format(version=version))
        jars = Path(staging) / "jars"
        command = [mvn, "-B", "-q", "-f", str(pom), f"{DEPENDENCY_PLUGIN}:copy-dependencies"]
        command += ["-DincludeScope=runtime", f"-DoutputDirectory={jars}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
        if result.returncode != 0:
            raise SystemExit(
                f"copying io.strimzi:api:{version} from Maven Central failed:\n{result.stdout}{result.stderr}"
            )
        (jars / ".complete").touch()
        if not (libs / ".complete").exists():
            shutil.rmtree(libs, ignore_errors=True)
            jars.rename(libs)
    return libs


def strimzi_crd_files(version: str, out: Path, cache: Path = CACHE) -> list[Path]:
    """Generate Strimzi's CRD YAML files of `version` into `out`, as its release build does."""
    java = find_java(21)
    if java is None:
        raise SystemExit("Strimzi's crd-generator needs Java 21+: install a JDK under /usr/lib/jvm")
    classpath = os.pathsep.join(str(jar) for jar in sorted(strimzi_generator_jars(version, cache).glob("*.jar")))
    targets = [out / name for name in _STRIMZI_CRDS.values()]
    command = [str(java.java), "-cp", classpath, "io.strimzi.crdgenerator.CrdGenerator", *_STRIMZI_GENERATOR_FLAGS]
    command += [
        f"io.strimzi.api.kafka.model.{cls}={target}" for cls, target in zip(_STRIMZI_CRDS, targets, strict=True)
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0 or not all(target.exists() for target in targets):
        raise SystemExit(f"Strimzi's CrdGenerator {version} failed:\n{result.stdout}{result.stderr}")
    return targets


def main(argv: list[str] | None = None) -> int:
    """Regenerate the schemas; exit 1 when a kind the manifests use has no schema."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--kubernetes", default=KUBERNETES_VERSION, help="k8s.io/kubernetes module version")
    parser.add_argument("--cloudnative-pg", default=CLOUDNATIVE_PG_VERSION, help="CloudNativePG module version")
    parser.add_argument("--strimzi", default=STRIMZI_VERSION, help="io.strimzi:api / crd-generator version")
    args = parser.parse_args(argv)

    used = kinds_used(args.manifests)
    swagger_path = go_module_dir("k8s.io/kubernetes", args.kubernetes) / "api" / "openapi-spec" / "swagger.json"
    swagger = json.loads(swagger_path.read_text())
    known_core = {
        (g["group"], g["version"], g["kind"])
        for d in swagger["definitions"].values()
        for g in d.get("x-kubernetes-group-version-kind", [])
    }
    cnpg_dir = go_module_dir("github.com/cloudnative-pg/cloudnative-pg", args.cloudnative_pg)
    custom = crd_schemas(yaml_files(cnpg_dir / "config" / "crd" / "bases"))
    with tempfile.TemporaryDirectory() as generated:
        custom.update(crd_schemas(strimzi_crd_files(args.strimzi, Path(generated))))

    sources = {
        "kubernetes": f"k8s.io/kubernetes@{args.kubernetes} api/openapi-spec/swagger.json (Go module proxy)",
        "postgresql.cnpg.io": (
            f"github.com/cloudnative-pg/cloudnative-pg@{args.cloudnative_pg} config/crd/bases (Go module proxy)"
        ),
        "kafka.strimzi.io": (
            f"io.strimzi:api:{args.strimzi} run through io.strimzi:crd-generator:{args.strimzi} (Maven Central),"
            " as the api pom's generate-crd-co-install-v1 execution"
        ),
    }

    files: dict[str, dict[str, Any]] = {}
    files.update({f"core/{name}": schema for name, schema in core_schemas(swagger, used & known_core).items()})
    missing = []
    for gvk in sorted(used - known_core):
        relative = f"crds/{crd_file_name(*gvk)}"
        if gvk in custom:
            files[relative] = custom[gvk]
        else:
            missing.append("/".join(gvk))
    if missing:
        print(f"no schema source for: {', '.join(missing)}", file=sys.stderr)
        return 1

    for stale in sorted(args.out.glob("*/**/*.json")):
        if stale.relative_to(args.out).as_posix() not in files:
            stale.unlink()
    for relative, schema in sorted(files.items()):
        target = args.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    (args.out / "SOURCES.json").write_text(json.dumps(sources, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(files)} schemas under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
