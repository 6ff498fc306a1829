//! The deployment files: the Kubernetes manifests in deploy/kubernetes validated offline
//! against the Kubernetes schemas (`kubernetes-validate` from PyPI, which ships them;
//! scripts/test.sh installs it in a venv), the options they give accepted by uturn's own
//! parser, and the container image built and run where a container engine answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::run_bounded;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests missing in {}", dir.display());
    files
}

/// `kubernetes-validate`: $KUBERNETES_VALIDATE, the venv scripts/test.sh makes, or PATH.
fn validator() -> PathBuf {
    let candidates = [
        std::env::var_os("KUBERNETES_VALIDATE").map(PathBuf::from),
        Some(repo().join("target/k8s-venv/bin/kubernetes-validate")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.exists() {
            return c;
        }
    }
    if Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok()
    {
        return PathBuf::from("kubernetes-validate");
    }
    panic!(
        "kubernetes-validate not found: scripts/test.sh installs it (python3 -m venv target/k8s-venv && target/k8s-venv/bin/pip install kubernetes-validate==1.37.0)"
    );
}

fn validate(file: &Path) -> (Option<i32>, String) {
    run_bounded(
        Command::new(validator()).arg("--strict").arg(file),
        Duration::from_secs(120),
    )
}

#[test]
fn kubernetes_manifests_pass_the_kubernetes_schemas_offline() {
    for file in manifests() {
        let (code, out) = validate(&file);
        assert_eq!(code, Some(0), "{}:\n{out}", file.display());
        assert!(out.contains("passed"), "{out}");
    }
    // The validator can fail: a misspelt field in a copy of the DaemonSet is caught.
    let good = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let bad = good.replacen("readOnlyRootFilesystem", "readOnlyRootFilesytem", 1);
    assert_ne!(good, bad);
    let path = std::env::temp_dir().join(format!("uturn-bad-{}.yaml", std::process::id()));
    std::fs::write(&path, bad).unwrap();
    let (code, out) = validate(&path);
    let _ = std::fs::remove_file(&path);
    assert_ne!(code, Some(0), "a misspelt field passed:\n{out}");
}

#[test]
fn kustomization_builds_and_lists_every_manifest() {
    let text =
        std::fs::read_to_string(repo().join("deploy/kubernetes/kustomization.yaml")).unwrap();
    for file in manifests() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(text.contains(&name), "kustomization.yaml misses {name}");
    }
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        println!("NOTE: kubectl absent, `kubectl kustomize` not run (the listing was checked)");
        return;
    }
    let (code, out) = run_bounded(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(repo().join("deploy/kubernetes")),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{out}");
    for kind in [
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "DaemonSet",
    ] {
        assert!(
            out.contains(&format!("kind: {kind}")),
            "no {kind} in:\n{out}"
        );
    }
}

/// The `|` block of `key` in a ConfigMap, unindented.
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    lines.next().expect("block key");
    let body: Vec<&str> = lines
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .collect();
    body.iter()
        .map(|l| l.trim_start())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first container's `args:` list of a manifest, with `$(VAR)` replaced.
fn container_args(yaml: &str, vars: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "args:");
    lines.next().expect("args:");
    for l in lines {
        let t = l.trim();
        if t.starts_with('#') {
            continue;
        }
        let Some(item) = t.strip_prefix("- ") else {
            break;
        };
        let mut item = item.trim_matches('"').to_owned();
        for (k, v) in vars {
            item = item.replace(&format!("$({k})"), v);
        }
        out.push(item);
    }
    out
}

#[test]
fn the_manifests_options_are_accepted_by_uturn() {
    let cm = std::fs::read_to_string(repo().join("deploy/kubernetes/configmap.yaml")).unwrap();
    let conf = block(&cm, "turnserver.conf");
    assert!(conf.contains("realm="), "{conf}");
    let dir = std::env::temp_dir().join(format!("uturn-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("turnserver.conf");
    std::fs::write(&path, &conf).unwrap();
    let ds = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let mut args = container_args(&ds, &[("NODE_IP", "10.0.0.7"), ("REDIS_PASSWORD", "pw")]);
    assert_eq!(args[..2], ["-c", "/etc/uturn/turnserver.conf"]);
    args[1] = path.to_string_lossy().into_owned();
    let config = uturn::config::Config::from_args(args.clone())
        .unwrap_or_else(|e| panic!("uturn refuses the manifests' options {args:?}: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(config.prometheus);
    assert_eq!(config.prometheus_port, 9641);
    assert_eq!(config.prometheus_address.to_string(), "10.0.0.7");
    let userdb = config.redis_userdb.expect("--redis-userdb");
    assert_eq!(userdb.host, "redis.uturn.svc.cluster.local");
    assert_eq!(userdb.password.as_deref(), Some("pw"));
    assert!(config.redis.is_some(), "--redis-statsdb");
    // The grace period covers the drain.
    let grace: u64 = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("terminationGracePeriodSeconds");
    assert!(
        config.drain_timeout.as_secs() > 0,
        "SIGTERM would not drain"
    );
    assert!(
        grace > config.drain_timeout.as_secs(),
        "grace period {grace} s does not cover --drain-timeout {:?}",
        config.drain_timeout
    );
    // The probes and the metrics port agree with the configuration.
    assert!(ds.contains("path: /readyz") && ds.contains("path: /healthz"));
    assert!(ds.contains("containerPort: 9641"));
}

fn engine_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run by scripts/test.sh only where `docker info` answers (it says so when not).
#[test]
#[ignore = "needs a container engine: scripts/test.sh runs it where `docker info` answers"]
fn container_image_builds_runs_as_non_root_and_answers() {
    assert!(
        engine_answers(),
        "no container engine answers `docker info`"
    );
    let (code, out) = run_bounded(
        Command::new("docker")
            .args(["build", "-t", "uturn:test"])
            .arg(repo()),
        Duration::from_secs(3600),
    );
    assert_eq!(code, Some(0), "docker build:\n{out}");
    let (code, out) = run_bounded(
        Command::new("docker").args(["run", "--rm", "uturn:test", "--version"]),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("uturn "), "{out}");
    let (code, out) = run_bounded(
        Command::new("docker").args(["run", "--rm", "--entrypoint", "id", "uturn:test", "-u"]),
        Duration::from_secs(60),
    );
    assert_eq!(
        (code, out.trim()),
        (Some(0), "10001"),
        "not the non-root user"
    );
}

/// What can be checked of the image without a container engine: every COPY source exists
/// and is not excluded by .dockerignore, the build is locked, the runtime runs as a
/// non-root user and starts uturn itself (PID 1, so it gets the signals).
#[test]
fn dockerfile_copies_what_exists_and_runs_uturn_as_non_root() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut copies = 0;
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from=") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY {src}: no such file");
            assert!(
                !ignored.iter().any(|i| src.starts_with(i)),
                "COPY {src} is excluded by .dockerignore"
            );
            copies += 1;
        }
    }
    assert!(copies >= 4, "{copies} COPY sources");
    assert!(text.contains("--locked"), "the build must use Cargo.lock");
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user}"
    );
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/uturn\"]"));
    assert!(
        ignored.contains(&"target"),
        "target/ would be sent as build context"
    );
}
