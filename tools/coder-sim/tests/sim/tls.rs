//! `https` with a certificate from a CA the test made.

use coder_sim::{SimConfig, SimServer, TestCa};

#[tokio::test]
async fn https_with_a_private_ca_is_trusted_only_by_clients_given_the_ca() {
    let ca = TestCa::generate("coder-sim test CA").expect("CA");
    let srv = SimServer::start(SimConfig {
        tls: Some(ca.tls.clone()),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    assert!(srv.url().starts_with("https://127.0.0.1:"), "{}", srv.url());
    let url = format!("{}/api/v2/buildinfo", srv.url());

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).expect("pem"))
        .build()
        .expect("client");
    let resp = trusting.get(&url).send().await.expect("TLS with the CA");
    assert_eq!(resp.status(), 200);

    let other = reqwest::Client::new();
    let err = other.get(&url).send().await.expect_err("unknown CA");
    let chain = std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .map(|e| e.to_string())
    .collect::<Vec<_>>()
    .join(": ");
    assert!(chain.contains("UnknownIssuer"), "{chain}");

    // The server goes on serving after a refused handshake.
    let resp = trusting.get(&url).send().await.expect("still serving");
    assert_eq!(resp.status(), 200);
}
