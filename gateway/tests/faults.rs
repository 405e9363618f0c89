//! Fault injection against real `gateway` and `worker` processes: broker
//! restarts (on a private RabbitMQ node this test owns, never the machine's
//! shared broker), killed and stopped workers, overload, poison messages.
//! Every test is bounded in time; every call must end with a status.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use amqp_gateway::pb::gateway_client::GatewayClient;
use futures::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use rand::Rng;
use testkit::{
    load::{Ended, READY, RawHttp2, call, client, gateway, steady_load, tally, worker},
    scrape,
};
use tonic::Code;

/// Polls with single calls until one succeeds.
async fn succeeds_eventually(probe: &GatewayClient<RawHttp2>, route: &str, what: &str) {
    testkit::eventually(what, READY, || {
        let mut probe = probe.clone();
        async move { call(&mut probe, route, b"probe".to_vec(), Duration::from_secs(5)).await.code == Some(Code::Ok) }
    })
    .await;
}

async fn health_is(addr: SocketAddr, serving: bool) -> bool {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await else {
        return false;
    };
    let mut health = HealthClient::new(channel);
    let check = health.check(HealthCheckRequest { service: "gateway.v1.Gateway".into() }).await;
    let want = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    check.is_ok_and(|r| r.into_inner().status == want as i32)
}

#[tokio::test]
async fn broker_restart_under_steady_load() {
    let broker = testkit::PrivateBroker::start().await;
    let route = testkit::unique("restart");
    let worker_metrics = testkit::free_addr().to_string();
    let _worker = worker(broker.url(), &route, &["--metrics-listen", &worker_metrics]).await;
    let gateway_metrics = testkit::free_addr();
    let (_gateway, addr) = gateway(broker.url(), &route, &["--metrics-listen", &gateway_metrics.to_string()]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(addr, route.clone(), 8, Duration::from_secs(5), stop.clone());
    let mut probe = client(addr);
    succeeds_eventually(&probe, &route, "load flowing").await;

    broker.ctl(&["stop_app"]).await;
    testkit::eventually("health NOT_SERVING while the broker is down", READY, || health_is(addr, false)).await;
    let down = call(&mut probe, &route, b"down".to_vec(), Duration::from_secs(5)).await;
    assert_eq!(down.code, Some(Code::Unavailable), "{down:?}");
    assert!(down.elapsed < Duration::from_secs(1), "must fail at once, not at the deadline: {down:?}");
    broker.ctl(&["start_app"]).await;

    // Recovery without restarting anything, within a bound.
    testkit::eventually("health SERVING again", READY, || health_is(addr, true)).await;
    succeeds_eventually(&probe, &route, "calls succeed again").await;
    for i in 0..50 {
        let ended = call(&mut probe, &route, format!("after {i}").into_bytes(), Duration::from_secs(5)).await;
        assert!(ended.code == Some(Code::Ok) && ended.payload_matches, "call {i} after recovery: {ended:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let ended = load.await.unwrap();

    let counts = tally(&ended);
    println!("broker restart under load: {counts:?}");
    for e in &ended {
        assert!(matches!(e.code, Some(Code::Ok | Code::Unavailable)), "every call ends OK or UNAVAILABLE: {e:?}");
        assert!(e.code != Some(Code::Ok) || e.payload_matches, "a reply reached the wrong caller: {e:?}");
    }
    assert!(counts.get("Ok").copied().unwrap_or(0) > 0);

    let metrics = scrape::metrics(gateway_metrics).await;
    assert!(scrape::total(&metrics, "gateway_broker_reconnects_total") >= 1.0, "{metrics}");
    assert_eq!(scrape::sample(&metrics, "gateway_pending_calls"), Some(0.0), "{metrics}");
    let metrics = scrape::metrics(worker_metrics.parse().unwrap()).await;
    assert!(scrape::total(&metrics, "worker_broker_reconnects_total") >= 1.0, "{metrics}");
}

#[tokio::test]
async fn worker_killed_mid_request_second_worker_answers() {
    let url = testkit::amqp_url();
    let route = testkit::unique("sigkill");
    let slow_metrics = testkit::free_addr();
    let mut slow = worker(
        &url,
        &route,
        &["--durable", "false", "--delay", "60s", "--prefetch", "1", "--metrics-listen", &slow_metrics.to_string()],
    )
    .await;
    let (_gateway, addr) = gateway(&url, &route, &[]).await;

    let mut caller = client(addr);
    let pending_route = route.clone();
    let call = tokio::spawn(async move {
        call(&mut caller, &pending_route, b"must survive".to_vec(), Duration::from_secs(20)).await
    });
    let in_flight = format!("worker_requests_in_flight{{route=\"{route}\"}}");
    testkit::eventually("the slow worker holds the request", READY, || {
        let in_flight = in_flight.clone();
        async move { scrape::sample(&scrape::metrics(slow_metrics).await, &in_flight) == Some(1.0) }
    })
    .await;

    let _second = worker(&url, &route, &["--durable", "false"]).await;
    slow.kill().await;
    let ended = call.await.unwrap();
    assert_eq!(ended.code, Some(Code::Ok), "{ended:?}");
    assert!(ended.payload_matches);
    assert!(ended.elapsed < Duration::from_secs(20), "answered within the deadline: {ended:?}");
}

#[tokio::test]
async fn two_gateways_three_workers_twenty_thousand_calls_one_worker_restarted() {
    let url = testkit::amqp_url();
    let route = testkit::unique("mix");
    let args = ["--durable", "false", "--prefetch", "64"];
    let mut workers =
        [worker(&url, &route, &args).await, worker(&url, &route, &args).await, worker(&url, &route, &args).await];
    let (_g1, a1) = gateway(&url, &route, &[]).await;
    let (_g2, a2) = gateway(&url, &route, &[]).await;
    let clients = [client(a1), client(a2)];

    const CALLS: usize = 20_000;
    let done = Arc::new(AtomicUsize::new(0));
    let (calls_route, calls_done) = (route.clone(), done.clone());
    let calls = (0..CALLS).map(move |i| {
        let mut client = clients[i % 2].clone();
        let (route, done) = (calls_route.clone(), calls_done.clone());
        async move {
            let (payload, deadline) = {
                let mut rng = rand::rng();
                let len = rng.random_range(0..2048);
                let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                (payload, Duration::from_millis(rng.random_range(200..3000)))
            };
            let ended = call(&mut client, &route, payload, deadline).await;
            done.fetch_add(1, Ordering::Relaxed);
            ended
        }
    });
    let run = tokio::spawn(futures::stream::iter(calls).buffer_unordered(256).collect::<Vec<Ended>>());

    // A quarter of the way in, one worker dies hard and a new one takes its place.
    let progress = done.clone();
    testkit::eventually("a quarter of the calls done", Duration::from_secs(120), || {
        let n = progress.load(Ordering::Relaxed);
        async move { n >= CALLS / 4 }
    })
    .await;
    workers[0].kill().await;
    workers[0] = worker(&url, &route, &args).await;

    let ended = tokio::time::timeout(Duration::from_secs(300), run).await.expect("the run must end").unwrap();
    let counts = tally(&ended);
    println!("20,000 calls, 2 gateways, 3 workers, one restarted: {counts:?}");
    assert_eq!(ended.len(), CALLS, "every call has a final status");
    let misrouted = ended.iter().filter(|e| e.code == Some(Code::Ok) && !e.payload_matches).count();
    assert_eq!(misrouted, 0, "replies delivered to the wrong caller");
    for e in &ended {
        let code = e.code.unwrap_or_else(|| panic!("a call hung: {e:?}"));
        assert!(matches!(code, Code::Ok | Code::DeadlineExceeded | Code::Unavailable), "unexpected {e:?}");
    }
    assert!(counts["Ok"] > CALLS / 2, "{counts:?}");
}

#[tokio::test]
async fn ten_thousand_calls_against_a_slow_worker_stay_bounded() {
    let url = testkit::amqp_url();
    let route = testkit::unique("overload");
    let _slow = worker(&url, &route, &["--durable", "false", "--delay", "120s", "--prefetch", "100"]).await;
    let metrics = testkit::free_addr();
    let (gateway, addr) =
        gateway(&url, &route, &["--max-in-flight", "20000", "--metrics-listen", &metrics.to_string()]).await;
    let baseline_kib = gateway.peak_rss_kib();

    // 20 connections of 500 concurrent calls each, all in flight at once.
    // The deadline leaves a debug-build gateway on a slow, shared 2-core
    // machine the time to take all of them in (about 10 s seen); a 4 s one
    // saw the first calls expire before the last were published.
    const CALLS: usize = 10_000;
    const DEADLINE: Duration = Duration::from_secs(30);
    let connections: Vec<_> = (0..20).map(|_| client(addr)).collect();
    let calls = (0..CALLS).map(|i| {
        let mut client = connections[i % connections.len()].clone();
        let route = route.clone();
        tokio::spawn(async move { call(&mut client, &route, vec![b'x'; 64], DEADLINE).await })
    });
    let calls: Vec<_> = calls.collect();
    testkit::eventually("10,000 calls waiting at once", Duration::from_secs(60), || async move {
        scrape::sample(&scrape::metrics(metrics).await, "gateway_pending_calls") == Some(CALLS as f64)
    })
    .await;
    let mut ended = Vec::with_capacity(CALLS);
    for call in calls {
        ended.push(call.await.unwrap());
    }

    let peak_kib = gateway.peak_rss_kib();
    println!("10,000 calls in flight: gateway peak RSS {} MiB (baseline {} MiB)", peak_kib / 1024, baseline_kib / 1024);
    let counts = tally(&ended);
    assert_eq!(counts.get("DeadlineExceeded"), Some(&CALLS), "a slow worker means DEADLINE_EXCEEDED: {counts:?}");
    // Debug build; the release build needs far less (see docs/performance.md).
    assert!(peak_kib < 250 * 1024, "gateway peak RSS {peak_kib} KiB with 10,000 calls in flight");
    let text = scrape::metrics(metrics).await;
    assert_eq!(scrape::sample(&text, "gateway_pending_calls"), Some(0.0), "{text}");
    assert_eq!(scrape::sample(&text, "gateway_calls_in_flight"), Some(0.0), "{text}");
}

#[tokio::test]
async fn poison_message_is_dead_lettered_after_the_delivery_limit() {
    let url = testkit::amqp_url();
    let route = testkit::unique("poison");
    let dead = format!("{route}.dead");
    let metrics = testkit::free_addr();
    let metrics_arg = metrics.to_string();
    // A worker that never finishes the message and is killed while holding
    // it, again and again: a crash loop.
    let args = [
        "--queue-type",
        "quorum",
        "--delivery-limit",
        "2",
        "--dead-letter-queue",
        &dead,
        "--delay",
        "60s",
        "--prefetch",
        "1",
        "--metrics-listen",
        &metrics_arg,
    ];
    let mut crashing = worker(&url, &route, &args).await;

    let connection = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    // Its reply, if any, would go to a queue nobody declared: dropped.
    let properties =
        BasicProperties::default().with_reply_to("nobody-listens".into()).with_correlation_id("poison".into());
    channel
        .basic_publish("".into(), route.as_str().into(), BasicPublishOptions::default(), b"poison", properties)
        .await
        .unwrap()
        .await
        .unwrap();

    let depth = |queue: String| {
        let channel = channel.clone();
        async move {
            let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await.unwrap().message_count()
        }
    };
    let in_flight = format!("worker_requests_in_flight{{route=\"{route}\"}}");
    let mut kills = 0;
    while depth(dead.clone()).await == 0 {
        assert!(kills < 5, "still not dead-lettered after {kills} crashes");
        testkit::eventually("the worker holds the message, or it is dead-lettered", READY, || {
            let (in_flight, dead) = (in_flight.clone(), dead.clone());
            async move {
                let holding = scrape::metrics(metrics).await.contains(&format!("{in_flight} 1"));
                holding || depth(dead).await == 1
            }
        })
        .await;
        if depth(dead.clone()).await == 1 {
            break;
        }
        crashing.kill().await;
        kills += 1;
        crashing = worker(&url, &route, &args).await;
    }
    // Delivered three times (the first plus two redeliveries), then given up on.
    assert_eq!(kills, 3, "crashes before the message was dead-lettered");
    assert_eq!(depth(route.clone()).await, 0);
    assert_eq!(depth(dead.clone()).await, 1);
    crashing.kill().await;
    for queue in [&route, &dead] {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
}

#[tokio::test]
async fn sigterm_under_load_loses_nothing() {
    let url = testkit::amqp_url();
    let route = testkit::unique("sigterm");
    let args = ["--durable", "false", "--delay", "20ms"];
    let mut first = worker(&url, &route, &args).await;
    let _second = worker(&url, &route, &args).await;
    let (mut gateway, addr) = gateway(&url, &route, &[]).await;

    // A worker stopped under load finishes or returns what it holds: every
    // call still gets its own reply.
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(addr, route.clone(), 32, Duration::from_secs(10), stop.clone());
    let mut probe = client(addr);
    succeeds_eventually(&probe, &route, "load flowing").await;
    assert!(first.terminate(Duration::from_secs(20)).await.success(), "{}", first.log());
    for i in 0..20 {
        let ended = call(&mut probe, &route, format!("after {i}").into_bytes(), Duration::from_secs(5)).await;
        assert!(ended.code == Some(Code::Ok) && ended.payload_matches, "{ended:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let ended = load.await.unwrap();
    println!("worker SIGTERM under load: {:?}", tally(&ended));
    for e in &ended {
        assert!(e.code == Some(Code::Ok) && e.payload_matches, "lost or wrong across a worker's shutdown: {e:?}");
    }

    // A gateway stopped under load answers every call it accepted.
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(addr, route.clone(), 32, Duration::from_secs(10), stop.clone());
    succeeds_eventually(&probe, &route, "load flowing").await;
    assert!(gateway.terminate(Duration::from_secs(20)).await.success(), "{}", gateway.log());
    stop.store(true, Ordering::Relaxed);
    let ended = load.await.unwrap();
    let counts = tally(&ended);
    println!("gateway SIGTERM under load: {counts:?}");
    for e in &ended {
        // Accepted calls are answered with their reply; calls that reach a
        // stopping or stopped gateway are refused, never left hanging.
        let code = e.code.unwrap_or_else(|| panic!("a call hung across the gateway's shutdown: {e:?}"));
        assert!(code == Code::Ok || code == Code::Unavailable, "{e:?}");
        assert!(code != Code::Ok || e.payload_matches, "{e:?}");
    }
}

#[tokio::test]
async fn the_soak_command_runs_and_reports() {
    let output = tokio::process::Command::new(testkit::bin("soak"))
        .args(["--duration", "8s", "--fault-every", "3s", "--concurrency", "16"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for line in
        ["calls sent", "lost                       0", "misrouted                  0", "broker restarted", "killed"]
    {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}
