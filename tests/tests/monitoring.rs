//! The dashboard and the alert rules of `deploy/monitoring/` name only metrics helmq exports:
//! every metric in their PromQL expressions appears in the `/metrics` output of a running worker
//! and producer (`helmq_worker::run` and `helmq_producer::run`, what the binaries' `main` call,
//! here with the in-memory Helm driver and Component store, against a real nats-server), so the
//! files cannot drift from the code.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use helmq_producer::store::fake::{FakeComponentStore, FakeEventStore, FakeLeaseStore};
use helmq_tests::build::{component, nginx_config};
use helmq_tests::{NatsServer, workspace_root};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// PromQL words that are neither metrics nor functions.
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];
/// Aggregation operators: functions that may take `by (...)` / `without (...)` before their
/// parenthesised argument.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Modifiers followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// range selectors and label lists that are not followed by `(` (functions, aggregations).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_group = |i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        let mut j = i;
        while j < chars.len() {
            if chars[j] == open {
                depth += 1;
            } else if chars[j] == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => i = skip_group(i, '{', '}'),
            '[' => i = skip_group(i, '[', ']'),
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let before_paren = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if before_paren {
                        i = skip_group(next, '(', ')');
                    }
                } else if !before_paren
                    && !AGGREGATIONS.contains(&word.as_str())
                    && !KEYWORDS.contains(&word.to_lowercase().as_str())
                {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every series name an exposition (OpenMetrics text) declares: the samples, and for each
/// `# TYPE` line the names its type gives (`_total` of a counter; `_bucket`, `_sum`, `_count`
/// of a histogram), so that a family without samples yet counts too.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Every PromQL expression of the dashboard (`targets[].expr`, rows included) and the alert
/// rules (`groups[].rules[].expr`), with where it comes from.
fn expressions() -> Vec<(String, String)> {
    let root = workspace_root().join("deploy/monitoring");
    let mut out = Vec::new();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("helmq-dashboard.json")).expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(&panel["panels"], out);
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a target with an expr");
                out.push((
                    format!("dashboard panel {}", panel["title"]),
                    expr.to_owned(),
                ));
            }
        }
    }
    walk(&dashboard["panels"], &mut out);
    let alerts: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root.join("alerts.yaml")).expect("read the alert rules"),
    )
    .expect("the alert rules are YAML");
    for group in alerts["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let expr = rule["expr"].as_str().expect("a rule with an expr");
            out.push((format!("alert {}", rule["alert"]), expr.to_owned()));
        }
    }
    out
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// `GET /metrics` once the endpoint answers (the process is starting) and shows `needle` (a
/// labelled family has no series, not even its `# TYPE` line, until something is counted).
async fn scrape(addr: SocketAddr, needle: &str) -> String {
    let mut last = String::new();
    for _ in 0..600 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            stream.write_all(request.as_bytes()).await.expect("send");
            let mut out = String::new();
            stream.read_to_string(&mut out).await.expect("read");
            if out.starts_with("HTTP/1.1 200") && out.contains(needle) {
                let (_headers, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
                return body.to_owned();
            }
            last = out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no /metrics showing {needle:?} on {addr}; the last answer:\n{last}");
}

/// The `/metrics` output of a worker and of a producer running against `nats`, once a Component
/// went through them (claimed and published by the producer, deployed by the worker, its status
/// written back), so that the labelled families have series.
async fn live_exposition(nats: &NatsServer) -> String {
    let shutdown = CancellationToken::new();
    let (worker_addr, producer_addr) = (free_addr(), free_addr());
    let worker_args = helmq_worker::Args::try_parse_from([
        "helmq-worker",
        "--nats-url",
        nats.url(),
        "--setup",
        "--allow-any-source",
        "--allow-any-namespace",
        "--listen",
        &worker_addr.to_string(),
    ])
    .expect("worker flags");
    let worker = tokio::spawn(helmq_worker::run(
        worker_args,
        helmq_worker::MemoryDriver::new(),
        shutdown.clone(),
    ));

    // The worker creates the topology (--setup) before it serves /metrics; the producer needs it.
    scrape(worker_addr, "helmq_worker_allow_any").await;
    let producer_args = helmq_producer::Args::try_parse_from([
        "helmq-producer",
        "--nats-url",
        nats.url(),
        "--leader-elect",
        "--listen",
        &producer_addr.to_string(),
    ])
    .expect("producer flags");
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let store = FakeComponentStore::new();
    store
        .create(component("web").config(nginx_config(json!({}))).build())
        .expect("create a Component");
    let token = shutdown.clone();
    let producer = tokio::spawn(async move {
        helmq_producer::run(
            &producer_args,
            store,
            FakeLeaseStore::new(),
            FakeEventStore::new(),
            js,
            token,
        )
        .await
    });
    if producer.is_finished() {
        panic!("the producer stopped: {:?}", producer.await);
    }
    // Deploying and Ready (the watcher wrote `Claimed` itself, with the job).
    let mut exposition = scrape(producer_addr, "helmq_writer_statuses_applied_total 2").await;
    exposition.push_str(&scrape(worker_addr, "helmq_worker_jobs_total{").await);
    shutdown.cancel();
    worker.await.expect("worker task").expect("worker run");
    producer
        .await
        .expect("producer task")
        .expect("producer run");
    exposition
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let nats = NatsServer::start();
    let exported = exported_names(&live_exposition(&nats).await);
    let expressions = expressions();
    assert!(
        expressions.len() > 20,
        "expected the dashboard's and the alerts' expressions, found {}",
        expressions.len()
    );
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (origin, expr) in &expressions {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{origin}: no metric in {expr:?}");
        for name in names {
            if !exported.contains(&name) {
                missing.push(format!("{origin}: {name}"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "metrics not in /metrics:\n{}\nexported: {exported:?}",
        missing.join("\n")
    );
    eprintln!(
        "{} expressions use {} metrics, all exported: {used:?}",
        expressions.len(),
        used.len()
    );
}

#[test]
fn metric_names_are_read_from_promql() {
    let table: [(&str, &[&str]); 6] = [
        ("absent(helmq_a)", &["helmq_a"]),
        (
            "sum by (le) (rate(helmq_b_bucket{x=\"y\"}[5m]))",
            &["helmq_b_bucket"],
        ),
        (
            "sum(rate(helmq_c[5m])) / sum(rate(helmq_d[5m])) > 0.2",
            &["helmq_c", "helmq_d"],
        ),
        (
            "max by (what) (helmq_e) > 0 and on (x) sum(helmq_f) == 1e3",
            &["helmq_e", "helmq_f"],
        ),
        (
            "histogram_quantile(0.95, helmq_g_bucket) offset 5m",
            &["helmq_g_bucket"],
        ),
        ("sum without (instance) (up{job=~\"a|b\"})", &["up"]),
    ];
    for (expr, want) in table {
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(metric_names(expr), want, "{expr}");
    }
}

#[test]
fn exported_names_expand_types_to_their_series() {
    let text = "# HELP a_jobs Jobs.\n# TYPE a_jobs counter\n# TYPE a_duration histogram\n\
                # TYPE a_up gauge\na_up 1\na_other{x=\"y\"} 2\n# EOF\n";
    let got = exported_names(text);
    let want: BTreeSet<String> = [
        "a_jobs_total",
        "a_duration_bucket",
        "a_duration_sum",
        "a_duration_count",
        "a_up",
        "a_other",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(got, want);
}
