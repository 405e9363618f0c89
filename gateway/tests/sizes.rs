//! Oversized messages in both directions against the real `gateway` binary
//! and the real broker: requests over the payload limit, whatever their size,
//! and replies over the reply limit from a hostile worker (a raw AMQP client
//! here). For each: the status the caller sees, what is counted, and that the
//! gateway's peak memory stays bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::Duration;

use futures::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use testkit::{
    load::{client, gateway, request, worker},
    scrape,
};
use tonic::Code;

const MIB: usize = 1024 * 1024;
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn oversized_requests_are_resource_exhausted_at_any_size_without_being_buffered() {
    let url = testkit::amqp_url();
    let route = testkit::unique("bigrequest");
    let _worker = worker(&url, &route, &["--durable", "false"]).await;
    let metrics = testkit::free_addr();
    let limit = MIB.to_string();
    let (gateway, addr) =
        gateway(&url, &route, &["--max-payload-bytes", &limit, "--metrics-listen", &metrics.to_string()]).await;
    let mut client = client(addr);

    // A payload right at the limit goes through (and warms every buffer a
    // large call uses, so the baseline below includes them).
    let ok = client.process(request(&route, vec![1u8; MIB], DEADLINE)).await.unwrap().into_inner();
    assert_eq!(ok.payload.len(), MIB);
    let baseline_kib = gateway.peak_rss_kib();

    // Just over the payload limit (the message fits: the payload check
    // answers), just over the message limit (the length prefix answers), and
    // far over it.
    for size in [MIB + 1, MIB + 256 * 1024 + 1, 64 * MIB] {
        let status = client.process(request(&route, vec![2u8; size], DEADLINE)).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{size} bytes: {status:?}");
        assert!(status.message().contains(&limit), "{size} bytes: {}", status.message());
    }

    // The connection and the gateway are fine afterwards.
    let ok = client.process(request(&route, b"after".to_vec(), DEADLINE)).await.unwrap().into_inner();
    assert_eq!(&ok.payload[..], b"after");
    let peak_kib = gateway.peak_rss_kib();
    println!("64 MiB request refused: gateway peak RSS {} MiB (baseline {} MiB)", peak_kib / 1024, baseline_kib / 1024);
    assert!(
        peak_kib < baseline_kib + 16 * 1024,
        "the gateway buffered an oversized request: peak RSS {peak_kib} KiB, baseline {baseline_kib} KiB"
    );
    let text = scrape::metrics(metrics).await;
    let rejected = scrape::sample(&text, r#"gateway_rejected_requests_total{reason="payload_too_large"}"#);
    assert_eq!(rejected, Some(3.0), "{text}");
}

#[tokio::test]
async fn compressed_requests_are_unimplemented() {
    // The gateway enables no request compression, so there is no
    // decompression to bound: a compressed request is refused before its body
    // is read.
    let url = testkit::amqp_url();
    let route = testkit::unique("gzip");
    let (_gateway, addr) = gateway(&url, &route, &[]).await;
    let mut call = request(&route, vec![3u8; 1024], DEADLINE);
    call.metadata_mut().insert("grpc-encoding", "gzip".parse().unwrap());
    let status = client(addr).process(call).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("gzip"), "{}", status.message());
}

/// A worker that answers a request whose payload is the decimal number N with
/// a reply body of N bytes: a buggy or hostile worker when N is large.
async fn sized_reply_worker(url: &str, route: &str) -> (Connection, tokio::task::JoinHandle<()>) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(route.into(), exclusive, FieldTable::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(route.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let size: usize = std::str::from_utf8(&delivery.data).unwrap().parse().unwrap();
            let properties =
                BasicProperties::default().with_correlation_id(delivery.properties.correlation_id().clone().unwrap());
            let reply_to = delivery.properties.reply_to().clone().unwrap();
            let body = vec![b'r'; size];
            let publish = channel.basic_publish("".into(), reply_to, BasicPublishOptions::default(), &body, properties);
            publish.await.unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
    (connection, task)
}

#[tokio::test]
async fn replies_over_the_limit_fail_their_call_are_counted_and_never_reach_the_caller() {
    let url = testkit::amqp_url();
    let route = testkit::unique("bigreply");
    let (connection, worker) = sized_reply_worker(&url, &route).await;
    let metrics = testkit::free_addr();
    // No --max-reply-bytes: the reply limit defaults to the payload limit.
    let limit = MIB.to_string();
    let (gateway, addr) =
        gateway(&url, &route, &["--max-payload-bytes", &limit, "--metrics-listen", &metrics.to_string()]).await;
    let mut client = client(addr);
    let call = |size: usize| request(&route, size.to_string().into_bytes(), DEADLINE);

    // Replies up to the limit are passed on.
    for size in [10, MIB] {
        let ok = client.process(call(size)).await.unwrap().into_inner();
        assert_eq!(ok.payload.len(), size);
    }
    let status = client.process(call(MIB + 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        format!("the worker's reply is {} bytes, over the gateway's reply limit of {limit} bytes", MIB + 1)
    );
    let baseline_kib = gateway.peak_rss_kib();

    // Many calls answered at once with 50 MiB each.
    const CALLS: usize = 8;
    let big = (0..CALLS).map(|_| {
        let mut client = client.clone();
        let request = call(50 * MIB);
        async move { client.process(request).await }
    });
    for outcome in futures::future::join_all(big).await {
        let status = outcome.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }

    // The next call is fine.
    assert_eq!(client.process(call(5)).await.unwrap().into_inner().payload.len(), 5);
    let peak_kib = gateway.peak_rss_kib();
    println!(
        "{CALLS} replies of 50 MiB refused: gateway peak RSS {} MiB (baseline {} MiB)",
        peak_kib / 1024,
        baseline_kib / 1024
    );
    // lapin assembles a whole body before the gateway sees it, one per reply
    // channel (`--channels`, 2) at a time at most: that, not the reply limit,
    // bounds the peak. What the limit adds is that no refused body is held a
    // moment longer, nor copied into a response (without it this run peaked
    // about 50 MiB higher, two replies being passed on at once).
    assert!(
        peak_kib < baseline_kib + (2 * 50 + 16) * 1024,
        "gateway peak RSS {peak_kib} KiB after refusing {CALLS} replies of 50 MiB, baseline {baseline_kib} KiB"
    );
    let text = scrape::metrics(metrics).await;
    let rejected = scrape::sample(&text, r#"gateway_replies_rejected_total{reason="too_large"}"#);
    assert_eq!(rejected, Some(1.0 + CALLS as f64), "{text}");
    assert_eq!(scrape::sample(&text, "gateway_pending_calls"), Some(0.0), "{text}");
    worker.abort();
    let _ = connection.close(200, "done".into()).await;
}
