//! The Kubernetes manifests in `deploy/k8s/`, checked against the API
//! schemas and against the binaries they run (issue 11, item 6).
//!
//! - `scripts/validate-k8s.sh` (kubernetes-validate from PyPI, pinned, with
//!   the schemas of a pinned Kubernetes version, strict) accepts every
//!   manifest, and rejects copies with a misspelled field or kind: the check
//!   bites.
//! - The wiring a schema cannot see: each StatefulSet has its headless
//!   Service, a PodDisruptionBudget of one, a data volume and probes on
//!   ports it declares.
//! - Every `--flag` in a container's args is in the `--help` of the binary
//!   its image runs, and every `$(VAR)` in them is in the container's env
//!   (Kubernetes passes an unknown one on literally).
//! - Each ConfigMap's TOML has exactly the keys of its template in
//!   `deploy/config/`, with the template's values except the few a
//!   deployment sets ([`DEPLOYMENT_VALUES`]).
//! - Each pod's config file and args, as Kubernetes hands them to it, pass
//!   the binary's own loading and validation, where an unknown TOML key is
//!   an error: the binary runs with a malformed `FAILPOINTS`, which both
//!   binaries refuse right after validating their config and before binding
//!   any port, so nothing is started.
//!
//! YAML and TOML are read by Python (PyYAML comes with the validator,
//! `tomllib` with Python 3.11) and handed over as JSON; the checks are here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::Duration;

use mnemo_chaos::cluster::{bin_dir, wait_for};
use serde_json::Value;

/// The binary each image runs as its entrypoint.
const IMAGES: &[(&str, &str)] = &[("mnemosyne/pd:dev", "mnemo-pd"), ("mnemosyne/node:dev", "mnemo-node")];

/// Per config file, the keys whose values a Kubernetes deployment sets
/// differently from the template (listen on every interface, data on the
/// pod's volume, PD through its Service). Anything else must stay as in
/// `deploy/config/`.
const DEPLOYMENT_VALUES: &[(&str, &[&str])] = &[
    ("node.toml", &["pd-endpoints", "addr", "status-addr", "data-dir"]),
    ("pd.toml", &["data-dir", "client-urls", "peer-urls"]),
];

/// Every object an operator applies, as the validator names them.
const OBJECTS: &[&str] = &[
    "configmap/mnemo-pd-config",
    "service/mnemo-pd",
    "service/mnemo-pd-peer",
    "statefulset/mnemo-pd",
    "poddisruptionbudget/mnemo-pd",
    "configmap/mnemo-node-config",
    "service/mnemo-node-peer",
    "statefulset/mnemo-node",
    "poddisruptionbudget/mnemo-node",
];

/// The namespace pods are imagined in when their args are expanded.
const NAMESPACE: &str = "default";

/// A `FAILPOINTS` value without `=`: PD refuses it as malformed, the node
/// refuses any `FAILPOINTS` without `--enable-test-controls`.
const MALFORMED_FAILPOINTS: &str = "deploy-manifests-dry-run";

const YAML_TO_JSON: &str =
    "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))";
const TOML_TO_JSON: &str = "import json, sys, tomllib\nprint(json.dumps(tomllib.loads(sys.stdin.read())))";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn text_of(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn script() -> Command {
    let mut c = Command::new("bash");
    c.arg(repo().join("scripts/validate-k8s.sh"));
    c
}

/// Installs the pinned validator (and with it PyYAML) once per test
/// process: the tests run in parallel and pip must not.
fn install_validator() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let out = script().arg("--install-only").output().expect("run bash");
        assert!(out.status.success(), "installing the validator failed:\n{}", text_of(&out));
    });
}

/// Runs `scripts/validate-k8s.sh` on `paths` (none: all of deploy/k8s).
fn validate(paths: &[&Path]) -> Output {
    install_validator();
    script().args(paths).output().expect("run bash")
}

/// Runs a Python snippet reading `input` on stdin and printing JSON.
fn python_json(snippet: &str, input: &str) -> Value {
    install_validator();
    let mut child = Command::new(python())
        .arg("-c")
        .arg(snippet)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write to python3");
    let out = child.wait_with_output().expect("python3");
    assert!(out.status.success(), "python3 failed:\n{}", text_of(&out));
    serde_json::from_slice(&out.stdout).expect("python3 prints JSON")
}

/// Every object of every manifest under deploy/k8s.
fn objects() -> Vec<Value> {
    let dir = repo().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        match python_json(YAML_TO_JSON, &text) {
            Value::Array(docs) => all.extend(docs),
            other => panic!("{}: not a list of documents: {other}", f.display()),
        }
    }
    all
}

fn of_kind<'a>(all: &'a [Value], kind: &str) -> Vec<&'a Value> {
    all.iter().filter(|o| o["kind"] == kind).collect()
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().expect("metadata.name")
}

fn containers(set: &Value) -> &[Value] {
    set["spec"]["template"]["spec"]["containers"].as_array().expect("containers")
}

fn binary_of(image: &str) -> &'static str {
    IMAGES.iter().find(|(i, _)| *i == image).unwrap_or_else(|| panic!("unknown image {image}")).1
}

fn args_of(c: &Value) -> Vec<&str> {
    c["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("args are strings")).collect()
}

/// True if every label `selector` asks for is in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_object().expect("a label map");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k.as_str()] == *v)
}

/// `VAR` of every `$(VAR)` in `arg`.
fn env_refs(arg: &str) -> Vec<&str> {
    arg.split("$(").skip(1).map(|rest| rest.split(')').next().unwrap_or(rest)).collect()
}

/// The long flags `binary --help` lists.
fn help_flags(binary: &str) -> BTreeSet<String> {
    let path = bin_dir().join(binary);
    let out = Command::new(&path)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (build the binaries or set MNEMO_BIN_DIR)", path.display()));
    assert!(out.status.success(), "{binary} --help failed:\n{}", text_of(&out));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|t| t.starts_with("--")))
        .map(|t| t.trim_end_matches(',').to_string())
        .collect()
}

/// A TOML document as `section.key` → value (arrays are values).
fn flatten(table: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v.as_object() {
            Some(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            None => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
}

/// The container's env as Kubernetes fills it in for pod `pod_name`.
fn pod_env(c: &Value, pod_name: &str) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_string();
            let value = match (e["value"].as_str(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
                (Some(v), _) => v.to_string(),
                (None, Some("metadata.name")) => pod_name.to_string(),
                (None, Some("metadata.namespace")) => NAMESPACE.to_string(),
                (None, Some("spec.nodeName")) => "k8s-worker-1".to_string(),
                (None, other) => panic!("env {name}: this test has no value for it ({other:?})"),
            };
            (name, value)
        })
        .collect()
}

/// The ConfigMap name and key a container sees at file `path`.
fn mounted_config_map(pod: &Value, c: &Value, path: &str) -> (String, String) {
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let mount = m["mountPath"].as_str().expect("mountPath").trim_end_matches('/');
        let Some(key) = path.strip_prefix(mount).and_then(|rest| rest.strip_prefix('/')) else { continue };
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("volume {} is not in the pod", m["name"]));
        let map = volume["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{path} is not on a ConfigMap volume"));
        return (map.to_string(), key.to_string());
    }
    panic!("no volume is mounted at {path}");
}

/// A child process killed when the test ends, whichever way it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `binary args` with a malformed `FAILPOINTS` and asserts that it got
/// as far as refusing that: its flags parsed, its config file loaded (no
/// unknown key) and the merged config validated. Exits of any other kind
/// fail, and so does a binary still running after 20 s (it is killed).
fn assert_config_accepted(binary: &str, args: &[String], scratch: &Path) {
    let path = bin_dir().join(binary);
    assert!(path.exists(), "{} not found: build the binaries or set MNEMO_BIN_DIR", path.display());
    let log_path = scratch.join(format!("{binary}.log"));
    let log = std::fs::File::create(&log_path).expect("create log");
    let child = Command::new(&path)
        .args(args)
        .env("FAILPOINTS", MALFORMED_FAILPOINTS)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut child = KillOnDrop(child);
    let status = wait_for(&format!("{binary} to exit"), Duration::from_secs(20), || {
        child.0.try_wait().expect("try_wait")
    });
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        status.code() == Some(2) && output.contains("FAILPOINTS"),
        "{binary} {args:?} did not get as far as checking FAILPOINTS ({status}): its flags or config \
         were refused:\n{output}"
    );
}

#[test]
fn every_manifest_passes_the_strict_schema_check() {
    let out = validate(&[]);
    let text = text_of(&out);
    assert!(out.status.success(), "scripts/validate-k8s.sh failed:\n{text}");
    for object in OBJECTS {
        let passed = format!("passed for resource {object} ");
        assert!(text.contains(&passed), "{object} was not validated:\n{text}");
    }
}

#[test]
fn the_schema_check_rejects_a_misspelled_field_or_kind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pd = std::fs::read_to_string(repo().join("deploy/k8s/pd.yaml")).expect("read pd.yaml");
    let cases = [
        // A field the API does not have: strict validation refuses it.
        ("readinessProbe:", "readinesProbe:", "'readinesProbe' was unexpected"),
        // A kind without a schema: the validator only warns, the script fails.
        (
            "kind: PodDisruptionBudget",
            "kind: PodDisruptionBudgett",
            "Couldn't find schema for kind PodDisruptionBudgett",
        ),
    ];
    for (i, &(right, wrong, complaint)) in cases.iter().enumerate() {
        assert!(pd.contains(right), "pd.yaml has no {right:?} to break");
        let broken = dir.path().join(format!("broken-{i}.yaml"));
        std::fs::write(&broken, pd.replacen(right, wrong, 1)).expect("write broken manifest");
        let out = validate(&[broken.as_path()]);
        let text = text_of(&out);
        assert!(!out.status.success(), "the validator accepted {wrong:?}:\n{text}");
        assert!(text.contains(complaint), "the validator did not say {complaint:?}:\n{text}");
    }
}

#[test]
fn each_statefulset_has_its_services_budget_volume_and_probes() {
    let all = objects();
    let sets = of_kind(&all, "StatefulSet");
    assert_eq!(sets.len(), 2, "one StatefulSet for PD, one for the nodes");
    for set in sets {
        let name = name_of(set);
        let spec = &set["spec"];
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(spec["replicas"], 3, "{name}: three replicas");
        assert!(selects(&spec["selector"]["matchLabels"], labels), "{name}: selector misses its pods");

        // Stable DNS names: a headless Service that lists pods before they
        // are ready (members and replicas must reach each other to get ready).
        let service = of_kind(&all, "Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == spec["serviceName"])
            .unwrap_or_else(|| panic!("{name}: no Service {}", spec["serviceName"]));
        assert_eq!(service["spec"]["clusterIP"], "None", "{name}: its Service must be headless");
        let not_ready = &service["spec"]["publishNotReadyAddresses"];
        assert_eq!(*not_ready, true, "{name}: {} must publish pods not ready", service["metadata"]["name"]);
        assert!(selects(&service["spec"]["selector"], labels), "{name}: its Service selects other pods");

        // Voluntary disruptions take one pod at a time.
        let budgets: Vec<_> = of_kind(&all, "PodDisruptionBudget")
            .into_iter()
            .filter(|b| selects(&b["spec"]["selector"]["matchLabels"], labels))
            .collect();
        assert_eq!(budgets.len(), 1, "{name}: one PodDisruptionBudget");
        assert_eq!(budgets[0]["spec"]["maxUnavailable"], 1, "{name}: maxUnavailable 1");

        let claims = spec["volumeClaimTemplates"].as_array().expect("volumeClaimTemplates");
        for c in containers(set) {
            let mounts: Vec<&Value> = c["volumeMounts"].as_array().into_iter().flatten().collect();
            for claim in claims {
                let claim = &claim["metadata"]["name"];
                assert!(mounts.iter().any(|m| m["name"] == *claim), "{name}: volume {claim} is not mounted");
            }
            let ports: BTreeSet<&str> =
                c["ports"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
            for probe in ["readinessProbe", "livenessProbe"] {
                let port = c[probe]["httpGet"]["port"].as_str();
                let named = port.is_some_and(|p| ports.contains(p));
                assert!(named, "{name}: {probe} must be an httpGet on a port the container names");
            }
            if let Some(port) = c.get("startupProbe").map(|p| &p["httpGet"]["port"]) {
                assert!(port.as_str().is_some_and(|p| ports.contains(p)), "{name}: startupProbe port {port}");
            }
        }
    }
}

#[test]
fn container_args_are_flags_of_the_binaries() {
    let all = objects();
    for set in of_kind(&all, "StatefulSet") {
        for c in containers(set) {
            let image = c["image"].as_str().expect("image");
            let binary = binary_of(image);
            let flags = help_flags(binary);
            let env: BTreeSet<&str> =
                c["env"].as_array().into_iter().flatten().filter_map(|e| e["name"].as_str()).collect();
            for arg in args_of(c) {
                let flag = arg.split('=').next().unwrap_or(arg);
                assert!(flag.starts_with("--"), "{image}: argument {arg:?} is not a --flag");
                assert!(flags.contains(flag), "{image}: {flag} is not a flag of {binary}; it has {flags:?}");
                for var in env_refs(arg) {
                    assert!(env.contains(var), "{image}: {arg} uses $({var}), not in the container's env");
                }
            }
        }
    }
}

#[test]
fn config_maps_are_the_templates_with_only_deployment_values_changed() {
    let all = objects();
    let mut files = BTreeSet::new();
    for map in of_kind(&all, "ConfigMap") {
        let map_name = name_of(map);
        for (file, text) in map["data"].as_object().expect("data") {
            let template_path = repo().join("deploy/config").join(file);
            let template = std::fs::read_to_string(&template_path)
                .unwrap_or_else(|e| panic!("{file} has no template {}: {e}", template_path.display()));
            let ours = flatten(&python_json(TOML_TO_JSON, text.as_str().expect("TOML text")));
            let theirs = flatten(&python_json(TOML_TO_JSON, &template));

            let unknown: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
            assert!(unknown.is_empty(), "{map_name}: keys not in deploy/config/{file}: {unknown:?}");
            let missing: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
            assert!(missing.is_empty(), "{map_name}: keys of deploy/config/{file} missing: {missing:?}");

            let deployment = DEPLOYMENT_VALUES
                .iter()
                .find(|(f, _)| *f == file.as_str())
                .unwrap_or_else(|| panic!("no per-deployment keys listed for {file}"))
                .1;
            for (key, value) in &ours {
                let template_value = &theirs[key];
                assert!(
                    value == template_value || deployment.contains(&key.as_str()),
                    "{map_name}: {key} = {value}, the template says {template_value}; only {deployment:?} \
                     may differ"
                );
            }
            files.insert(file.clone());
        }
    }
    let expected: BTreeSet<String> = DEPLOYMENT_VALUES.iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(files, expected, "a ConfigMap for each config template");
}

#[test]
fn binaries_accept_each_pods_config_file_and_args() {
    let all = objects();
    let scratch = tempfile::tempdir().expect("temp dir");
    for set in of_kind(&all, "StatefulSet") {
        let set_name = name_of(set);
        let replicas = set["spec"]["replicas"].as_u64().expect("replicas");
        let pod = &set["spec"]["template"]["spec"];
        for c in containers(set) {
            let binary = binary_of(c["image"].as_str().expect("image"));
            let args = args_of(c);
            // The file --config names is a ConfigMap key mounted there.
            let config_path = args
                .iter()
                .find_map(|a| a.strip_prefix("--config="))
                .unwrap_or_else(|| panic!("{set_name}: no --config=PATH"));
            let (map_name, key) = mounted_config_map(pod, c, config_path);
            let map = of_kind(&all, "ConfigMap")
                .into_iter()
                .find(|m| name_of(m) == map_name)
                .unwrap_or_else(|| panic!("{set_name}: no ConfigMap {map_name}"));
            let text = map["data"][key.as_str()]
                .as_str()
                .unwrap_or_else(|| panic!("ConfigMap {map_name} has no {key}"));
            let config_file = scratch.path().join(format!("{set_name}-{key}"));
            std::fs::write(&config_file, text).expect("write config file");

            for i in 0..replicas {
                let pod_name = format!("{set_name}-{i}");
                let env = pod_env(c, &pod_name);
                let argv: Vec<String> = args
                    .iter()
                    .map(|a| {
                        if a.starts_with("--config=") {
                            return format!("--config={}", config_file.display());
                        }
                        let mut a = a.to_string();
                        for (name, value) in &env {
                            a = a.replace(&format!("$({name})"), value);
                        }
                        assert!(!a.contains("$("), "{pod_name}: {a} keeps an unexpanded $(...)");
                        a
                    })
                    .collect();
                assert_config_accepted(binary, &argv, scratch.path());
            }
        }
    }
}
