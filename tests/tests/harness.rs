//! The harness itself: a server per test, on its own port and store, gone after drop.

use std::time::Duration;

use helmq_tests::NatsServer;

#[test]
fn each_server_gets_its_own_port_and_is_gone_after_drop() {
    if std::env::var_os("NATS_URL").is_some() {
        eprintln!("SKIPPED: NATS_URL points the tests at an external server");
        return;
    }
    let a = NatsServer::start();
    let b = NatsServer::start();
    assert_ne!(a.url(), b.url());
    let addr = a.url().trim_start_matches("nats://").to_owned();
    assert!(std::net::TcpStream::connect(&addr).is_ok());
    if let Some(wanted) = std::env::var_os("HELMQ_NATS_SERVER") {
        let wanted = helmq_tests::binary_version(wanted.as_ref()).unwrap();
        assert_eq!(a.version().as_deref(), Some(wanted.as_str()));
    }
    drop(a);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "server still listening after drop"
    );
}

#[tokio::test]
async fn a_restarted_server_keeps_its_jetstream_store() {
    if std::env::var_os("NATS_URL").is_some() {
        eprintln!("SKIPPED: NATS_URL points the tests at an external server");
        return;
    }
    let mut server = NatsServer::start();
    let url = server.url().to_owned();
    {
        let client = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "KEEP".into(),
            subjects: vec!["keep.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("keep.one", "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    server.restart();
    assert_eq!(server.url(), url);
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("KEEP").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[test]
fn the_end_to_end_suite_says_how_to_run_it_when_it_cannot_run() {
    // SAFETY of the environment: this test only reads the variable through the gate; nextest runs
    // each test in its own process, so setting it here touches no other test.
    let was = std::env::var_os("HELMQ_E2E");
    if was.as_deref() == Some(std::ffi::OsStr::new("1")) {
        assert!(helmq_tests::e2e_gate().is_ok());
        return;
    }
    let message = helmq_tests::e2e_gate().unwrap_err();
    assert!(message.contains("HELMQ_E2E=1"), "{message}");
    assert!(
        message.contains("KUBECONFIG") && message.contains("HELM_BIN"),
        "{message}"
    );
}
