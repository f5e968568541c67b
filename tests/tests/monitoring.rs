//! `deploy/monitoring/`: every metric the Grafana dashboard and the Prometheus alert rules use
//! is one a running node exports on `/litefs/metrics`; the rules cover what an operator must
//! hear about; `promtool` accepts the rules, the dashboard's queries and the Prometheus config
//! (when installed; under CI=1 it must be: `.ci/run` installs Debian's `prometheus`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use litefs_proxy_tests::{
    client::get,
    cluster::{Cluster, Options},
    django::under_ci,
};

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .join("deploy/monitoring")
        .join(file)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// The sample names in an exposition, and those its `# TYPE` lines allow (a family with no
/// sample yet, such as a labelled counter nothing has counted, still has its TYPE line).
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            if let Some(name) = line
                .split(['{', ' '])
                .next()
                .filter(|_| !line.starts_with('#'))
            {
                out.insert(name.to_owned());
            }
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["_sum", "_count", "_created", ""],
            _ => &[""],
        };
        for s in suffixes {
            out.insert(format!("{name}{s}"));
        }
    }
    out
}

/// The `litefs_…` metric names a PromQL expression uses.
fn used(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("litefs_"))
        .map(str::to_owned)
        .collect()
}

/// Every `expr` string in a JSON document (Grafana targets), with the panel title.
fn json_exprs(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title);
            if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                out.push((title.to_owned(), e.to_owned()));
            }
            for child in m.values() {
                json_exprs(child, title, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| json_exprs(c, title, out)),
        _ => {}
    }
}

/// (alert name, expr) of every rule.
fn rules() -> Vec<(String, String)> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&monitoring("litefs-proxy-rules.yml"))).expect("YAML");
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let alert = r["alert"].as_str().expect("an alert name").to_owned();
            let expr = r["expr"].as_str().expect("an expr").to_owned();
            assert!(
                r["labels"]["severity"].is_string(),
                "{alert}: a severity label"
            );
            assert!(
                r["annotations"]["summary"].is_string(),
                "{alert}: a summary"
            );
            out.push((alert, expr));
        }
    }
    out
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let d: serde_json::Value =
        serde_json::from_str(&read(&monitoring("grafana-dashboard.json"))).expect("JSON");
    assert!(d["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let mut out = Vec::new();
    json_exprs(&d["panels"], "", &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let c = Cluster::start(Options::default()).await;
    let leader = c
        .wait_leader(&[0, 1, 2], Duration::from_secs(30))
        .await
        .expect("a leader");
    let m = get(c.nodes[leader].proxy, "/litefs/metrics", &[])
        .await
        .expect("metrics");
    let names = exported(&m.text());
    assert!(names.contains("litefs_election_term"), "{names:?}");

    let rules = rules();
    let alerts: Vec<&str> = rules.iter().map(|(a, _)| a.as_str()).collect();
    for (want, metric) in [
        ("replication lag", "litefs_proxy_replication_lag_seconds"),
        ("no primary", "litefs_proxy_is_primary"),
        ("held writes", "litefs_proxy_held_requests"),
        ("failovers", "litefs_election_elections_seen_total"),
        ("sync timeouts", "litefs_proxy_syncs_total"),
    ] {
        assert!(
            rules
                .iter()
                .any(|(_, e)| used(e).iter().any(|u| u == metric)),
            "no alert on {want} ({metric}): {alerts:?}"
        );
    }
    let mut checked = 0;
    for (what, expr) in rules.iter().chain(&dashboard_exprs()) {
        let metrics = used(expr);
        assert!(!metrics.is_empty(), "{what}: no litefs metric in {expr}");
        for u in metrics {
            assert!(
                names.contains(&u),
                "{what}: {u} is not on /litefs/metrics (has {names:?})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} metric uses checked");
}

fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool");
    }
    assert!(
        !under_ci(),
        "promtool is missing (Debian package prometheus; .ci/run installs it)"
    );
    eprintln!("skipped: promtool not installed (apt-get install prometheus)");
    None
}

fn promtool_ok(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_the_dashboard_queries_and_the_config() {
    let Some(_) = promtool() else { return };
    let dir = monitoring("");
    promtool_ok(&["check", "rules", "litefs-proxy-rules.yml"], &dir);
    promtool_ok(&["check", "config", "prometheus.yml"], &dir);
    // The dashboard's queries, with Grafana's variables filled in, as recording rules: so
    // promtool parses each one.
    let tmp = tempfile::tempdir().unwrap();
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (k, (_, expr)) in dashboard_exprs().iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m").replace("$job", ".*");
        let quoted = serde_json::to_string(&expr).unwrap();
        text += &format!("      - record: dashboard:query{k}\n        expr: {quoted}\n");
    }
    std::fs::write(tmp.path().join("dashboard.yml"), text).unwrap();
    promtool_ok(&["check", "rules", "dashboard.yml"], tmp.path());
}
