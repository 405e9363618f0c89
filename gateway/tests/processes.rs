//! The real binaries, as an operator runs them: `worker` and `gateway`
//! processes against the broker from `AMQP_URL`, driven by grpcurl through
//! server reflection, stopped with SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::Duration;

use testkit::{Process, load::logged};
use tokio::process::Command;

const READY: Duration = Duration::from_secs(20);

#[tokio::test]
async fn grpcurl_lists_describes_calls_and_checks_health() {
    let url = testkit::amqp_url();
    let route = testkit::unique("grpcurl");
    // Debug logs: the credential check at the end covers more than the defaults.
    let env = [("AMQP_URL", url.as_str()), ("RUST_LOG", "debug")];
    let mut worker = Process::spawn("worker", &["--route", &route, "--durable", "false"], &env);
    logged(&worker, "consuming").await;

    let addr = testkit::free_addr();
    let listen = addr.to_string();
    let mut gateway =
        Process::spawn("gateway", &["--listen", &listen, "--routes", &route, "--default-route", &route], &env);
    logged(&gateway, "connected to the broker").await;

    // Health, as load balancers and orchestrators ask for it.
    testkit::eventually("health SERVING", READY, || async move {
        let (ok, out) = testkit::grpcurl_plaintext(
            addr,
            &["-d", r#"{"service":"gateway.v1.Gateway"}"#],
            &["grpc.health.v1.Health/Check"],
        )
        .await;
        ok && out.contains("\"SERVING\"")
    })
    .await;
    let (ok, out) = testkit::grpcurl_plaintext(addr, &[], &["grpc.health.v1.Health/Check"]).await;
    assert!(ok && out.contains("\"SERVING\""), "{out}");
    // The same check as a container health check runs it.
    let probe = Command::new(testkit::bin("gateway")).args(["--probe", "--listen", &listen]).output().await.unwrap();
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let closed = testkit::free_addr().to_string();
    let probe = Command::new(testkit::bin("gateway")).args(["--probe", "--listen", &closed]).output().await.unwrap();
    assert!(!probe.status.success(), "probing a closed port must fail");

    // Discovery through reflection, with the proto's comments.
    let (ok, out) = testkit::grpcurl_plaintext(addr, &[], &["list"]).await;
    assert!(ok, "{out}");
    for service in ["gateway.v1.Gateway", "grpc.health.v1.Health"] {
        assert!(out.lines().any(|l| l.trim() == service), "{service} missing from:\n{out}");
    }
    // grpcurl lists the reflection version it speaks (v1alpha before 1.9, v1
    // after); both are served, see `e2e::reflection_v1_and_v1alpha`.
    assert!(out.lines().any(|l| l.trim().starts_with("grpc.reflection.v1")), "{out}");
    let (ok, out) = testkit::grpcurl_plaintext(addr, &[], &["describe", "gateway.v1.Gateway"]).await;
    assert!(
        ok && out.contains("rpc Process ( .gateway.v1.ProcessRequest ) returns ( .gateway.v1.ProcessResponse )"),
        "{out}"
    );
    assert!(out.contains("Process publishes one request"), "comments must reach grpcurl:\n{out}");
    let (ok, out) = testkit::grpcurl_plaintext(addr, &[], &["describe", "gateway.v1.ProcessRequest"]).await;
    assert!(ok && out.contains("string route = 1;") && out.contains("Worker pool to call"), "{out}");

    // A call, exactly as the README shows it ("aGVsbG8=" is "hello").
    let body = format!(r#"{{"route":"{route}","payload":"aGVsbG8=","content_type":"text/plain"}}"#);
    let (ok, out) = testkit::grpcurl_plaintext(addr, &["-d", &body], &["gateway.v1.Gateway/Process"]).await;
    assert!(ok, "{out}");
    assert!(out.contains(r#""payload": "aGVsbG8=""#) && out.contains(r#""contentType": "text/plain""#), "{out}");
    assert!(out.contains(r#""correlationId": ""#), "{out}");
    // The default route.
    let (ok, out) =
        testkit::grpcurl_plaintext(addr, &["-d", r#"{"payload":"aGk="}"#], &["gateway.v1.Gateway/Process"]).await;
    assert!(ok && out.contains(r#""payload": "aGk=""#), "{out}");
    // A refused call shows its code.
    let (ok, out) =
        testkit::grpcurl_plaintext(addr, &["-d", r#"{"route":"not-allowed"}"#], &["gateway.v1.Gateway/Process"]).await;
    assert!(!ok && out.contains("Code: InvalidArgument"), "{out}");

    // Graceful stop, and no credential in any log line.
    assert!(gateway.terminate(Duration::from_secs(20)).await.success(), "{}", gateway.log());
    assert!(worker.terminate(Duration::from_secs(20)).await.success(), "{}", worker.log());
    assert!(gateway.log().contains("AMQP connection closed"), "{}", gateway.log());
    assert!(worker.log().contains("AMQP connection closed"), "{}", worker.log());
    if let Some(password) = password_of(&url) {
        for process in [&gateway, &worker] {
            assert!(!process.log().contains(&format!(":{password}@")), "password leaked in:\n{}", process.log());
        }
    }
}

#[tokio::test]
async fn help_does_not_show_secrets() {
    let url = "amqp://user:hunter2-secret@127.0.0.1:5672/%2f";
    for binary in ["gateway", "worker"] {
        let output = Command::new(testkit::bin(binary))
            .arg("--help")
            .env("AMQP_URL", url)
            .env("GATEWAY_TOKENS", "token-secret-0123456789")
            .output()
            .await
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && help.contains("--amqp-url"), "{help}");
        assert!(!help.contains("hunter2-secret"), "{binary} --help shows the password:\n{help}");
        assert!(!help.contains("token-secret"), "{binary} --help shows a token:\n{help}");
    }
}

#[tokio::test]
async fn configured_secrets_never_reach_the_logs() {
    // A full run at debug level, with a password in the broker URL and
    // tokens, including failed calls: neither secret appears in any log line.
    let url = testkit::amqp_url();
    let route = testkit::unique("secrets");
    let token = "log-secret-token-0123456789";
    let env = [("AMQP_URL", url.as_str()), ("RUST_LOG", "debug"), ("GATEWAY_TOKENS", token)];
    let mut worker = Process::spawn("worker", &["--route", &route, "--durable", "false"], &env);
    logged(&worker, "consuming").await;
    let addr = testkit::free_addr();
    let listen = addr.to_string();
    let mut gateway = Process::spawn("gateway", &["--listen", &listen, "--routes", &route], &env);
    logged(&gateway, "connected to the broker").await;
    let body = format!(r#"{{"route":"{route}","payload":"aGk="}}"#);
    let auth = format!("authorization: Bearer {token}");
    let (ok, out) =
        testkit::grpcurl_plaintext(addr, &["-H", &auth, "-d", &body], &["gateway.v1.Gateway/Process"]).await;
    assert!(ok, "{out}");
    let (ok, out) = testkit::grpcurl_plaintext(
        addr,
        &["-H", "authorization: Bearer wrong-token-0123456789", "-d", &body],
        &["gateway.v1.Gateway/Process"],
    )
    .await;
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    assert!(gateway.terminate(Duration::from_secs(20)).await.success());
    assert!(worker.terminate(Duration::from_secs(20)).await.success());
    for process in [&gateway, &worker] {
        let log = process.log();
        assert!(!log.contains(token) && !log.contains("wrong-token"), "a token leaked:\n{log}");
        if let Some(password) = password_of(&url) {
            assert!(!log.contains(&format!(":{password}@")), "the password leaked:\n{log}");
        }
    }
}

#[tokio::test]
async fn bad_configuration_exits_with_a_clear_message() {
    let url = testkit::amqp_url();
    let output = Command::new(testkit::bin("gateway"))
        .args(["--routes", "a,b", "--default-route", "c", "--listen", "127.0.0.1:0"])
        .env("AMQP_URL", &url)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("default route \"c\" is not in the allow-list"), "{stderr}");
}

fn password_of(url: &str) -> Option<String> {
    let authority = url.split("://").nth(1)?.split('@').next()?;
    authority.split_once(':').map(|(_, p)| p.to_owned()).filter(|p| !p.is_empty())
}

/// `amqp://user:PASSWORD@127.0.0.1:PORT/%2f` for a port nothing listens on.
fn dead_node(password: &str) -> String {
    format!("amqp://user:{password}@{}/%2f", testkit::free_addr())
}

#[tokio::test]
async fn a_list_of_broker_nodes_is_tried_in_turn_without_showing_a_password() {
    // Two nodes that are down around the real one: each binary must skip them
    // (whichever it starts at), say which node it is on, and never show the
    // dead nodes' passwords, even at debug level.
    let url = testkit::amqp_url();
    let node =
        url::Url::parse(&url).map(|u| format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(5672))).unwrap();
    let list = format!("{},{url},{}", dead_node("first-secret"), dead_node("second-secret"));
    let route = testkit::unique("nodes");
    let env = [("AMQP_URL", list.as_str()), ("RUST_LOG", "debug")];
    let mut worker = Process::spawn("worker", &["--route", &route, "--durable", "false"], &env);
    logged(&worker, "consuming").await;
    let listen = testkit::free_addr().to_string();
    let mut gateway = Process::spawn("gateway", &["--listen", &listen, "--routes", &route], &env);
    logged(&gateway, "connected to the broker").await;
    // The health check names the node, and so does the probe.
    let probe = || Command::new(testkit::bin("gateway")).args(["--probe", "--listen", &listen]).output();
    testkit::eventually("the probe says SERVING", READY, || async { probe().await.unwrap().status.success() }).await;
    let output = probe().await.unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(said.trim(), format!("SERVING (broker node {node})"));
    assert!(gateway.terminate(Duration::from_secs(20)).await.success());
    assert!(worker.terminate(Duration::from_secs(20)).await.success());
    for process in [&gateway, &worker] {
        let log = process.log();
        assert!(!log.contains("first-secret") && !log.contains("second-secret"), "a password leaked:\n{log}");
        assert!(log.contains(&format!("node={node}")), "{log}");
    }
}

#[tokio::test]
async fn broker_lists_that_do_not_parse_are_refused_without_showing_a_password() {
    let (first, second) = (dead_node("first-secret"), dead_node("second-secret"));
    for list in [format!("{first};{second}"), format!("{first} {second}"), format!("{first},,{second}")] {
        for (binary, args) in [("gateway", &["--routes", "echo"][..]), ("worker", &[][..])] {
            let run =
                Command::new(testkit::bin(binary)).args(args).env("AMQP_URL", &list).env("RUST_LOG", "debug").output();
            let output = tokio::time::timeout(READY, run).await.expect("the binary did not exit").unwrap();
            let text =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            assert!(!output.status.success(), "{binary} started with {list}:\n{text}");
            assert!(text.contains("invalid AMQP URL"), "{binary}:\n{text}");
            assert!(!text.contains("first-secret") && !text.contains("second-secret"), "{binary} leaked:\n{text}");
        }
    }
}
