//! The deployment artifacts: the Helm chart rendered by a real Helm engine (PyPI's
//! helm-python-sdk, Helm v4 through its Go SDK) with default and production-like values,
//! linted, validated by kubernetes-validate (strict) and scanned by checkov; bad values
//! refused by the schema; every rendered and example config passing `weir config check`;
//! the systemd units passing `systemd-analyze verify`; the compose file passing
//! `docker-compose config`. `./scripts/test` installs the tools. No container engine or
//! cluster runs here: nothing is started.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::weir;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Renders the chart with `values` (files layered in order) into `out`; returns the
/// rendered files and Helm's lint report, or Helm's error.
fn render(out: &Path, values: &[PathBuf]) -> Result<(Vec<PathBuf>, serde_json::Value), String> {
    let o = Command::new("python3")
        .arg(root().join("tests/fixtures/helm_render.py"))
        .arg(root().join("helm"))
        .arg(out)
        .args(values)
        .output()
        .expect("python3");
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the render report");
    let files = report["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| PathBuf::from(f.as_str().unwrap_or_default()))
        .collect();
    Ok((files, report))
}

fn all(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The TOML files inside the rendered config ConfigMap: (name, text).
fn rendered_configs(files: &[PathBuf]) -> Vec<(String, String)> {
    let cm = files
        .iter()
        .find(|f| f.to_string_lossy().ends_with("configmap-config.yaml"))
        .expect("the config ConfigMap");
    let text = fs::read_to_string(cm).unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(".toml: |")) {
            out.push((name.to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            if let Some(l) = line.strip_prefix("    ") {
                body.push_str(l);
                body.push('\n');
            } else if line.trim().is_empty() {
                body.push('\n');
            }
        }
    }
    out
}

/// `weir config check` on `file`, with placeholder secrets for every `${NAME}` it names
/// and the chart's catalog where the config names the in-cluster catalog directory.
fn config_check(file: &Path) -> Output {
    let text = fs::read_to_string(file).unwrap();
    let mut cmd = weir();
    cmd.args(["config", "check"]).arg(file);
    let mut rest = text.as_str();
    while let Some(i) = rest.find("${") {
        let name: String = rest[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let value = if name.ends_with("URL") {
            format!("http://placeholder-{}.invalid:1", name.to_lowercase().replace('_', "-"))
        } else {
            format!("placeholder-{}", name.to_lowercase())
        };
        cmd.env(&name, value);
        rest = &rest[i + 2..];
    }
    for line in text.lines() {
        if let Some(var) = line
            .trim()
            .strip_prefix("key_env = \"")
            .and_then(|l| l.strip_suffix('"'))
        {
            cmd.env(var, "placeholder-key");
        }
    }
    if text.contains("catalog = \"/etc/weir/catalog\"") {
        cmd.env("WEIR_CATALOG", root().join("helm/catalog"));
    }
    cmd.output().unwrap()
}

#[test]
fn the_chart_renders_lints_validates_and_passes_checkov() {
    let tmp = tempfile::tempdir().unwrap();
    let production = root().join("helm/ci/production-values.yaml");
    let kafka = vec![production.clone(), root().join("helm/ci/kafka-values.yaml")];
    for (label, values) in [("default", vec![]), ("production", vec![production]), ("kafka", kafka)] {
        let out = tmp.path().join(label);
        let (files, report) = render(&out, &values).unwrap_or_else(|e| panic!("{label}: {e}"));
        let lint = &report["lint"];
        assert_eq!(lint["errors"], serde_json::json!([]), "{label}: {lint}");
        let serious: Vec<_> = lint["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 2)
            .collect();
        assert!(serious.is_empty(), "{label}: lint warnings {serious:?}");

        let manifests = all(&files);
        // Routers: a StatefulSet with volumes in HTTP mode, a Deployment in Kafka mode.
        let routers = if label == "kafka" {
            "kind: Deployment"
        } else {
            "kind: StatefulSet"
        };
        for kind in [
            "kind: DaemonSet",
            routers,
            "kind: PodDisruptionBudget",
            "kind: NetworkPolicy",
            "internalTrafficPolicy: Local",
            "checksum/config:",
            "checksum/catalog:",
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            "path: /healthz",
            "path: /readyz",
            "type: DirectoryOrCreate",
        ] {
            assert!(manifests.contains(kind), "{label}: no {kind:?}");
        }
        let deployments = manifests.lines().filter(|l| *l == "kind: Deployment").count();
        if label == "kafka" {
            assert_eq!(deployments, 3, "{label}: loader, proxy and router");
            assert!(!manifests.contains("kind: StatefulSet") && !manifests.contains("volumeClaimTemplates"));
            assert!(
                !manifests.contains("routers = ["),
                "{label}: collectors produce to Kafka"
            );
            assert_eq!(
                manifests.matches(r#"kafka = { brokers = "kafka-0.kafka:9093,kafka-1.kafka:9093,kafka-2.kafka:9093", topic = "weir.events""#).count(),
                3,
                "{label}: collector, proxy and router"
            );
            assert!(manifests.contains(r#"group = "weir", partitions = 24"#), "{label}");
            assert_eq!(
                manifests
                    .matches(r#""sasl.password" = "${KAFKA_SASL_PASSWORD}""#)
                    .count(),
                3,
                "{label}"
            );
            assert_eq!(manifests.matches("- name: KAFKA_SASL_PASSWORD").count(), 3, "{label}");
            assert_eq!(
                manifests.matches("kind: HorizontalPodAutoscaler").count(),
                2,
                "{label}: the proxy's and the routers'"
            );
        } else {
            assert_eq!(deployments, 2, "{label}: loader and proxy");
        }
        // The internal endpoints' tokens: generated into a Secret, required by the router
        // and Flight, sent by collectors and the proxy.
        assert!(
            manifests.contains("router-token: ") && manifests.contains("flight-token: "),
            "{label}: token Secret"
        );
        assert!(manifests.contains(r#"token = "${ROUTER_TOKEN}""#), "{label}");
        assert_eq!(
            manifests.matches(r#"router_token = "${ROUTER_TOKEN}""#).count(),
            2,
            "{label}: collector and proxy"
        );
        assert!(manifests.contains(r#"flight_token = "${FLIGHT_TOKEN}""#), "{label}");
        assert_eq!(
            manifests.matches("- name: ROUTER_TOKEN").count(),
            3,
            "{label}: collector, router, proxy"
        );
        assert!(
            !manifests.contains("amqp://") && !manifests.contains("mongodb://"),
            "{label}: no connection string in a manifest"
        );
        if label != "default" {
            for kind in ["kind: Ingress", "kind: HorizontalPodAutoscaler", "kind: ServiceMonitor"] {
                assert!(manifests.contains(kind), "{label}: no {kind:?}");
            }
            assert!(manifests.contains("secretKeyRef"), "credentials by Secret reference");
            assert!(manifests.contains(r#""sasl.password" = "${RECIPIENT_STREAM_SASL_PASSWORD}""#));
            assert!(manifests.contains(r#"geoip = "/var/lib/geoip/GeoLite2-City.mmdb""#));
            // Scraped: collector, router, flight and proxy-metrics Services, once each.
            assert_eq!(manifests.matches("weir.dev/metrics: \"true\"").count(), 5);
            // With `from` set, weir's own pods still reach each other (4 policies).
            assert_eq!(
                manifests.matches("# weir's own pods always reach each other").count(),
                4
            );
            if label == "production" {
                assert!(
                    manifests.contains("weir-router-2.weir-router-headless.weir.svc:8081"),
                    "collectors list every router"
                );
            }
        }
        assert!(report["notes"].as_str().unwrap_or_default().contains("/v1/events"));

        let o = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .args(&files)
            .output()
            .unwrap();
        assert!(o.status.success(), "{label}: kubernetes-validate:\n{}", text(&o));

        let o = Command::new("python3")
            // Files, not -d: checkov skips directories whose names start with a dot (as
            // temporary directories' do).
            .args([
                "-m",
                "checkov.main",
                "--framework",
                "kubernetes",
                "--compact",
                "--quiet",
                "--skip-download",
                "-f",
            ])
            .args(&files)
            .env("BC_SKIP_MAPPING", "TRUE")
            .output()
            .unwrap();
        let said = text(&o);
        assert!(
            o.status.success() && said.contains("Failed checks: 0"),
            "{label}: checkov failed checks not justified in values.yaml:\n{said}"
        );
    }
}

#[test]
fn bad_values_fail_at_render_with_the_schema_message() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, yaml, says) in [
        (
            "unknown-kind",
            "router:\n  recipients:\n    q:\n      kind: redis\n      urlSecret: {name: s, key: url}\n",
            "/router/recipients/q/kind",
        ),
        ("negative-replicas", "proxy:\n  replicas: -1\n", "/proxy/replicas"),
        (
            "key-without-secret-name",
            "proxy:\n  keys:\n    - env: web\n      secret: {key: web}\n",
            "missing property 'name'",
        ),
        ("typo", "colector:\n  port: 80\n", "colector"),
        (
            "file-buffer-with-three-routers",
            "router:\n  replicas: 3\n",
            "/router/replicas",
        ),
        (
            "kafka-mode-with-the-file-buffer",
            "kafka:\n  enabled: true\n  brokers: k:9092\n",
            "/router/buffer/kind",
        ),
    ] {
        let values = tmp.path().join(format!("{name}.yaml"));
        fs::write(&values, yaml).unwrap();
        let err = render(&tmp.path().join(name), &[values]).expect_err(name);
        assert!(err.contains(says), "{name}: {err}");
    }
}

#[test]
fn rendered_and_example_configs_pass_config_check() {
    let tmp = tempfile::tempdir().unwrap();
    let production = root().join("helm/ci/production-values.yaml");
    let kafka = vec![production.clone(), root().join("helm/ci/kafka-values.yaml")];
    let mut checked = 0;
    for (label, values) in [("default", vec![]), ("production", vec![production]), ("kafka", kafka)] {
        let (files, _) = render(&tmp.path().join(label), &values).unwrap();
        let configs = rendered_configs(&files);
        let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["collector", "router", "loader", "proxy"], "{label}");
        for (name, body) in configs {
            let file = tmp.path().join(format!("{label}-{name}.toml"));
            fs::write(&file, &body).unwrap();
            let o = config_check(&file);
            assert!(o.status.success(), "{label} {name}.toml:\n{body}\n{}", text(&o));
            checked += 1;
        }
    }
    for entry in fs::read_dir(root().join("deploy/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let o = config_check(&path);
            assert!(o.status.success(), "{}:\n{}", path.display(), text(&o));
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
    // A config naming a secret that is not in the environment says which.
    let file = tmp.path().join("missing.toml");
    fs::write(
        &file,
        "[router.recipients.q]\nkind = \"rabbitmq\"\nurl = \"${RABBITMQ_URL}\"\n",
    )
    .unwrap();
    let o = weir()
        .args(["config", "check"])
        .arg(&file)
        .env_remove("RABBITMQ_URL")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("RABBITMQ_URL"), "{}", text(&o));
}

#[test]
fn the_chart_ships_the_demo_catalog_unchanged() {
    for entry in fs::read_dir(root().join("proto/demo-catalog")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            fs::read_to_string(root().join("helm/catalog").join(name)).unwrap_or_default(),
            "helm/catalog/{} differs from proto/demo-catalog",
            name.to_string_lossy()
        );
    }
}

#[test]
fn systemd_units_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_weir");
    let mut units = Vec::new();
    for entry in fs::read_dir(root().join("deploy/systemd")).unwrap() {
        let path = entry.unwrap().path();
        // The units name the installed binary; point them at the one just built so
        // verify can check it is executable.
        let text = fs::read_to_string(&path).unwrap().replace("/usr/local/bin/weir", bin);
        let dest = tmp.path().join(path.file_name().unwrap());
        fs::write(&dest, text).unwrap();
        units.push(dest);
    }
    assert_eq!(units.len(), 4);
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian's systemd; ./scripts/test installs it)");
    let said = text(&o);
    assert!(
        o.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn the_compose_file_is_valid() {
    let o = Command::new("docker-compose")
        .arg("-f")
        .arg(root().join("deploy/docker-compose.yml"))
        .args(["config", "--quiet"])
        .output()
        .expect("docker-compose (Debian's; ./scripts/test installs it)");
    assert!(o.status.success(), "docker-compose config:\n{}", text(&o));
    let o = Command::new("docker-compose")
        .arg("-f")
        .arg(root().join("deploy/docker-compose.yml"))
        .arg("config")
        .output()
        .unwrap();
    let config = String::from_utf8_lossy(&o.stdout);
    for service in [
        "rabbitmq:",
        "mongo:",
        "kafka:",
        "router:",
        "collector:",
        "loader:",
        "proxy:",
    ] {
        assert!(config.contains(service), "no {service}");
    }
    // Kafka mode is a profile of its own.
    let o = Command::new("docker-compose")
        .arg("-f")
        .arg(root().join("deploy/docker-compose.yml"))
        .args(["--profile", "kafka-mode", "config"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docker-compose --profile kafka-mode config:\n{}",
        text(&o)
    );
    let config = String::from_utf8_lossy(&o.stdout);
    for service in ["router-kafka:", "collector-kafka:", "loader-kafka:"] {
        assert!(config.contains(service), "no {service} in the kafka-mode profile");
    }
}
