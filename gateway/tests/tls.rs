//! TLS both ways, with certificates made at test time (rcgen): gRPC over TLS
//! and mutual TLS checked with grpcurl, and `amqps://` to a broker behind a
//! TLS endpoint signed by a private CA, for the gateway and the worker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use testkit::{Process, load::logged};
use tokio::{net::TcpListener, process::Command};

/// A private CA, a server certificate for localhost / 127.0.0.1 and a client
/// certificate, as PEM files in a temporary directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(testkit::unique("gateway-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "gateway test CA");
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        for (name, sans, usage) in [
            ("server", vec!["localhost".to_owned(), "127.0.0.1".to_owned()], ExtendedKeyUsagePurpose::ServerAuth),
            ("client", vec!["caller.test".to_owned()], ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            std::fs::write(dir.join(format!("{name}.pem")), params.signed_by(&key, &issuer).unwrap().pem()).unwrap();
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs grpcurl with `flags` against `addr`; returns (success, output).
async fn grpcurl(flags: &[&str], addr: SocketAddr, command: &[&str]) -> (bool, String) {
    // A refused handshake would otherwise wait out grpcurl's 10 s dial timeout.
    let output = Command::new(testkit::grpcurl())
        .args(["-connect-timeout", "3"])
        .args(flags)
        .arg(addr.to_string())
        .args(command)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

async fn gateway(url: &str, routes: &str, extra: &[&str]) -> (Process, SocketAddr) {
    let addr = testkit::free_addr();
    let listen = addr.to_string();
    let mut args = vec!["--listen", listen.as_str(), "--routes", routes];
    args.extend_from_slice(extra);
    let process = Process::spawn("gateway", &args, &[("AMQP_URL", url)]);
    logged(&process, "gateway starting").await;
    (process, addr)
}

#[tokio::test]
async fn grpc_over_tls_and_mutual_tls() {
    let pki = Pki::new();
    let url = testkit::amqp_url();
    let route = testkit::unique("tls");
    let worker = Process::spawn("worker", &["--route", &route, "--durable", "false"], &[("AMQP_URL", url.as_str())]);
    logged(&worker, "consuming").await;
    let (cert, key, ca) = (pki.path("server.pem"), pki.path("server-key.pem"), pki.path("ca.pem"));
    let body = format!(r#"{{"route":"{route}","payload":"aGk="}}"#);
    let call = ["-d", body.as_str()];

    // TLS: a client trusting the CA is served; plaintext is not.
    let (tls_gateway, addr) = gateway(&url, &route, &["--tls-cert", &cert, "--tls-key", &key]).await;
    logged(&tls_gateway, "connected to the broker").await;
    let (ok, out) = grpcurl(&["-cacert", &ca, call[0], call[1]], addr, &["gateway.v1.Gateway/Process"]).await;
    assert!(ok && out.contains(r#""payload": "aGk=""#), "{out}");
    let (ok, out) = grpcurl(&["-plaintext"], addr, &["list"]).await;
    assert!(!ok, "plaintext must not be served on a TLS port: {out}");

    // Mutual TLS: a client without a certificate is refused.
    let mtls = ["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca];
    let (mtls_gateway, addr) = gateway(&url, &route, &mtls).await;
    logged(&mtls_gateway, "connected to the broker").await;
    let (ok, out) = grpcurl(&["-cacert", &ca, call[0], call[1]], addr, &["gateway.v1.Gateway/Process"]).await;
    assert!(!ok, "a client without a certificate must be refused: {out}");
    let (client_cert, client_key) = (pki.path("client.pem"), pki.path("client-key.pem"));
    let flags = ["-cacert", &ca, "-cert", &client_cert, "-key", &client_key, call[0], call[1]];
    let (ok, out) = grpcurl(&flags, addr, &["gateway.v1.Gateway/Process"]).await;
    assert!(ok && out.contains(r#""payload": "aGk=""#), "{out}");
}

/// A TLS endpoint in front of the broker, with the test CA's server
/// certificate: what a broker with a private CA looks like to its clients.
async fn tls_broker(pki: &Pki) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter(pki.path("server.pem")).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path("server-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let broker = testkit::broker_addr();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(broker).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn amqps_with_a_private_ca() {
    let pki = Pki::new();
    let endpoint = tls_broker(&pki).await;
    // The credentials of AMQP_URL, over TLS to the endpoint, by host name.
    let mut url = url::Url::parse(&testkit::amqp_url()).unwrap();
    url.set_scheme("amqps").unwrap();
    url.set_host(Some("localhost")).unwrap();
    url.set_port(Some(endpoint.port())).unwrap();
    let url = url.to_string();
    let ca = pki.path("ca.pem");
    let route = testkit::unique("amqps");

    let worker = Process::spawn(
        "worker",
        &["--route", &route, "--durable", "false", "--amqp-ca-file", &ca],
        &[("AMQP_URL", url.as_str())],
    );
    logged(&worker, "consuming").await;
    let (trusting, addr) = gateway(&url, &route, &["--amqp-ca-file", &ca]).await;
    logged(&trusting, "connected to the broker").await;
    let body = format!(r#"{{"route":"{route}","payload":"aGk="}}"#);
    let (ok, out) = grpcurl(&["-plaintext", "-d", &body], addr, &["gateway.v1.Gateway/Process"]).await;
    assert!(ok && out.contains(r#""payload": "aGk=""#), "{out}");

    // Without the CA, the broker's certificate is not trusted: no connection.
    let (untrusting, _) = gateway(&url, &route, &[]).await;
    logged(&untrusting, "cannot connect to the broker").await;
    assert!(!untrusting.log().contains("connected to the broker"), "{}", untrusting.log());
}
