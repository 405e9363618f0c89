//! The metrics table in `docs/observability.md` against the code, so that it
//! cannot drift again: every metric the gateway and the worker declare is in
//! the table, every metric in the table is declared, and the labels the
//! running binaries put on each metric are the ones the table names.
//!
//! Two views of "declared", because neither alone is complete: the sources
//! (every `counter!`, `gauge!`, `histogram!` and `describe_*!` name in the
//! production crates, including metrics created only when an event happens,
//! which a scrape would not show), and a scrape of real `gateway` and
//! `worker` processes after a call (names built any other way, and the
//! labels actually recorded).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use amqp_gateway::pb::{ProcessRequest, gateway_client::GatewayClient};
use testkit::load::{gateway, worker};
use tonic::Code;

/// Metric name → label names, as the table in `docs/observability.md` has them.
type Table = BTreeMap<String, BTreeSet<String>>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Reads the table under `## Metrics`: each backticked `name{label,label}` in
/// its first column is a metric.
fn documented() -> Table {
    let path = workspace().join("docs/observability.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let section = text.split_once("\n## Metrics\n").unwrap_or_else(|| panic!("no '## Metrics' in {path:?}")).1;
    let rows = section
        .lines()
        .skip_while(|line| !line.starts_with("| metric |"))
        .skip(2) // header and separator
        .take_while(|line| line.starts_with('|'));
    let mut table = Table::new();
    for row in rows {
        let first = row.trim_start_matches('|').split('|').next().unwrap_or_default();
        for (i, cell) in first.split('`').enumerate() {
            if i % 2 == 0 {
                continue; // outside backticks
            }
            let (name, labels) = match cell.split_once('{') {
                Some((name, rest)) => {
                    (name, rest.trim_end_matches('}').split(',').map(|l| l.trim().to_owned()).collect())
                }
                None => (cell, BTreeSet::new()),
            };
            assert!(table.insert(name.to_owned(), labels).is_none(), "{name} is in the table twice");
        }
    }
    assert!(table.len() > 10, "the metrics table in {path:?} was not found or not read: {table:?}");
    table
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The metric names the production crates declare: the string literal that
/// opens every `counter!(`, `gauge!(` and `histogram!(` (and so every
/// `describe_counter!(` ...). A name that is not a literal fails the test:
/// this check could not see it.
fn declared_in_sources() -> BTreeSet<String> {
    let mut files = Vec::new();
    for dir in ["src", "gateway/src", "worker/src", "otel/src"] {
        sources(&workspace().join(dir), &mut files);
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = text[at + macro_name.len()..].trim_start();
                let name = rest
                    .strip_prefix('"')
                    .and_then(|r| r.split_once('"'))
                    .map(|(name, _)| name)
                    .unwrap_or_else(|| {
                        let line = text[..at].lines().count();
                        panic!("{file:?}:{line}: a metric name that is not a string literal; make it one, or teach this test")
                    });
                names.insert(name.to_owned());
            }
        }
    }
    assert!(
        names.contains("gateway_calls_total") && names.contains("worker_messages_total"),
        "the source scan found too little: {names:?}"
    );
    names
}

#[test]
fn every_metric_in_the_sources_is_documented_and_every_documented_one_is_declared() {
    let documented: BTreeSet<String> = documented().into_keys().collect();
    let declared = declared_in_sources();
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&declared).collect();
    assert!(undocumented.is_empty(), "declared in the code, missing from docs/observability.md: {undocumented:?}");
    assert!(missing.is_empty(), "in docs/observability.md, declared nowhere in the code: {missing:?}");
}

/// Metric name → label names seen on its samples, from Prometheus text format.
/// Histograms and summaries are named by their `# TYPE` line; their `_sum`,
/// `_count` and `_bucket` series and `le`/`quantile` labels belong to them.
fn served(text: &str) -> Table {
    let mut table = Table::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            table.entry(name.to_owned()).or_default();
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
        let (sample, labels) = series.split_once('{').unwrap_or((series, ""));
        let metric = ["", "_sum", "_count", "_bucket"]
            .iter()
            .find_map(|suffix| sample.strip_suffix(suffix).filter(|base| table.contains_key(*base)))
            .unwrap_or_else(|| panic!("a sample of no declared metric: {line}"))
            .to_owned();
        let names = label_names(labels.trim_end_matches('}')).into_iter().filter(|l| l != "le" && l != "quantile");
        table.get_mut(&metric).unwrap().extend(names);
    }
    table
}

/// The names in `a="x",b="y \" z"`.
fn label_names(mut labels: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((name, rest)) = labels.split_once("=\"") {
        names.push(name.trim_start_matches(',').to_owned());
        let mut escaped = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                let close = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                close
            })
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("unterminated label value in {labels}"));
        labels = &rest[end + 1..];
    }
    names
}

#[tokio::test]
async fn the_binaries_serve_only_documented_metrics_with_the_documented_labels() {
    let url = testkit::amqp_url();
    let route = testkit::unique("metrics-doc");
    let worker_metrics = testkit::free_addr();
    let _worker = worker(&url, &route, &["--durable", "false", "--metrics-listen", &worker_metrics.to_string()]).await;
    let gateway_metrics = testkit::free_addr();
    let (_gateway, addr) = gateway(&url, &route, &["--metrics-listen", &gateway_metrics.to_string()]).await;

    // One call answered, one refused: the refusal creates the rejection
    // counter, which exists only once something was rejected.
    let mut client = GatewayClient::connect(format!("http://{addr}")).await.unwrap();
    client.process(ProcessRequest { route: route.clone(), ..Default::default() }).await.unwrap();
    let refused = client.process(ProcessRequest { route: "not-allowed".into(), ..Default::default() }).await;
    assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    // The worker counts its reply once the broker confirmed it: maybe just
    // after the caller has it.
    let ok = format!("worker_messages_total{{route=\"{route}\",outcome=\"ok\"}}");
    testkit::eventually("the worker counted its reply", Duration::from_secs(5), || {
        let ok = ok.clone();
        async move { testkit::scrape::sample(&testkit::scrape::metrics(worker_metrics).await, &ok) == Some(1.0) }
    })
    .await;

    let documented = documented();
    let mut seen = Table::new();
    for (process, addr, prefix) in [("gateway", gateway_metrics, "gateway_"), ("worker", worker_metrics, "worker_")] {
        let text = testkit::scrape::metrics(addr).await;
        for (name, labels) in served(&text) {
            assert!(name.starts_with(prefix), "the {process} serves {name}, outside its {prefix} namespace:\n{text}");
            let expected = documented
                .get(&name)
                .unwrap_or_else(|| panic!("the {process} serves {name}, missing from docs/observability.md:\n{text}"));
            assert_eq!(&labels, expected, "labels of {name} served by the {process}, and as documented:\n{text}");
            seen.insert(name, labels);
        }
    }
    // Not vacuous: the call, the refusal and the reply were all seen.
    for name in ["gateway_calls_total", "gateway_rejected_requests_total", "worker_messages_total"] {
        assert!(seen.contains_key(name), "{name} was not served: {seen:?}");
    }
}
