//! The Prometheus example, run for real: its recorder installed globally, its
//! app served over TCP and scraped; and the Grafana dashboard checked against
//! what the scrape contains.
#![cfg(all(feature = "latency", feature = "axum"))]

#[allow(dead_code)] // the example's `main` is not run here
#[path = "../examples/prometheus.rs"]
mod example;

use std::collections::BTreeSet;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: String,
) -> (u16, String) {
    let res = client.get(url.parse().unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The series names and label names in a Prometheus text exposition.
fn exposition(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap();
        names.insert(line[..end].to_owned());
        if let Some(rest) = line[end..].strip_prefix('{') {
            let inner = &rest[..rest.rfind('}').unwrap()];
            for pair in inner.split("\",") {
                labels.insert(pair.split('=').next().unwrap().trim().to_owned());
            }
        }
    }
    (names, labels)
}

#[tokio::test]
async fn scrape_shows_histograms_and_the_dashboard_queries_only_emitted_metrics() {
    // A layer used before any recorder exists: the no-op gets its first
    // samples, the exporter installed afterwards gets the rest.
    let early = tower::ServiceBuilder::new()
        .layer(
            tower_perf::latency::LatencyLayer::new()
                .naming(tower_perf::latency::Naming::Prometheus),
        )
        .service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                Bytes::from("x"),
            )))
        });
    let early_call = || async {
        let req = http::Request::put("/early").body(()).unwrap();
        let res = tower::ServiceExt::oneshot(early.clone(), req)
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    };
    early_call().await;
    early_call().await;

    let handle = example::install_recorder();
    early_call().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, example::app(handle)).await });

    let client = Client::builder(TokioExecutor::new()).build_http();
    for path in ["/users/1", "/users/2", "/slow", "/fail", "/events", "/nope"] {
        get(&client, format!("http://{addr}{path}")).await;
    }
    let (status, text) = get(&client, format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);

    let name = "http_server_request_duration_seconds";
    assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
    let users =
        r#"http_request_method="GET",http_route="/users/{id}",http_response_status_code="200""#;
    // Every OTel bucket, then +Inf, each cumulative over the two requests.
    for le in ["0.005", "0.1", "1", "10", "+Inf"] {
        let line = format!("{name}_bucket{{{users},le=\"{le}\"}} 2");
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l == format!("{name}_count{{{users}}} 2")),
        "{text}"
    );
    assert!(text
        .lines()
        .any(|l| l.starts_with(&format!("{name}_sum{{{users}}} "))));
    // /slow sleeps 120 ms: not in the 0.1 s bucket, in the 0.25 s one.
    let slow = r#"http_request_method="GET",http_route="/slow",http_response_status_code="200""#;
    assert!(
        text.contains(&format!("{name}_bucket{{{slow},le=\"0.1\"}} 0")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{name}_bucket{{{slow},le=\"0.25\"}} 1")),
        "{text}"
    );
    let fail = r#"http_request_method="GET",http_route="/fail",http_response_status_code="500",error_type="500""#;
    assert!(
        text.contains(&format!("{name}_count{{{fail}}} 1")),
        "{text}"
    );
    let unmatched =
        r#"http_request_method="GET",http_route="unmatched",http_response_status_code="404""#;
    assert!(
        text.contains(&format!("{name}_count{{{unmatched}}} 1")),
        "{text}"
    );
    assert!(!text.contains("/nope"), "raw paths never become labels");
    assert!(text.contains("# TYPE http_server_active_requests gauge"));
    assert!(
        text.contains(r#"http_server_active_requests{http_request_method="GET"} 0"#),
        "{text}"
    );
    assert!(!text.contains("/metrics"), "scrapes are not measured");
    let early =
        r#"http_request_method="PUT",http_route="unmatched",http_response_status_code="200""#;
    assert!(
        text.contains(&format!("{name}_count{{{early}}} 1")),
        "only the request after the install: {text}"
    );

    // The dashboard: every metric and label it queries is in the scrape.
    let (names, labels) = exposition(&text);
    let dashboard = include_str!("../dashboards/tower-perf.json");
    let exprs = exprs(dashboard);
    assert!(exprs.len() >= 6, "{exprs:?}");
    for expr in &exprs {
        let idents = identifiers(expr);
        let metrics: Vec<&String> = idents
            .iter()
            .filter(|i| i.starts_with("http_server_"))
            .collect();
        assert!(!metrics.is_empty(), "{expr} queries no metric of the layer");
        for metric in metrics {
            assert!(
                names.contains(metric),
                "{expr}: {metric} is not emitted: {names:?}"
            );
        }
        for label in label_refs(expr) {
            assert!(
                labels.contains(&label),
                "{expr}: label {label} is not emitted: {labels:?}"
            );
        }
    }
}

/// The PromQL `expr` strings of a Grafana dashboard JSON, unescaped.
fn exprs(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = json;
    while let Some(i) = rest.find("\"expr\"") {
        rest = &rest[i + 6..];
        rest = rest.trim_start().strip_prefix(':').unwrap().trim_start();
        let mut chars = rest.strip_prefix('"').expect("expr is a string").chars();
        let mut expr = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => expr.push(chars.next().unwrap()),
                c => expr.push(c),
            }
        }
        rest = chars.as_str();
        out.push(expr);
    }
    out
}

fn identifiers(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Label names in `by (...)` clauses and `{...}` matchers (`le` is the
/// exporter's bucket label, present on every bucket line).
fn label_refs(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (open, close) in [("by (", ')'), ("{", '}')] {
        let mut rest = expr;
        while let Some(i) = rest.find(open) {
            rest = &rest[i + open.len()..];
            let inner = &rest[..rest.find(close).unwrap()];
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
    }
    out
}
