//! The `helmq-producer` binary: operations endpoints, an unreachable API server (the watcher
//! backs off and keeps going) and a clean exit on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use helmq_tests::NatsServer;
use helmq_tests::wait::eventually_blocking;

const DEADLINE: Duration = Duration::from_secs(20);

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn serves_health_and_metrics_survives_a_dead_api_server_and_stops_on_sigterm() {
    let server = NatsServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        helmq_queue::Topology::default()
            .ensure(&async_nats::jetstream::new(client))
            .await
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
         clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: x, context: {cluster: c, user: u}}]\n",
    )
    .unwrap();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_helmq-producer"))
        .args([
            "--nats-url",
            server.url(),
            "--listen",
            &addr.to_string(),
            "--log-json",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("NATS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    eventually_blocking(DEADLINE, "/healthz", || {
        get(addr, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    eventually_blocking(DEADLINE, "/readyz", || {
        get(addr, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    // The API server is unreachable: the watcher reports errors and keeps backing off.
    eventually_blocking(DEADLINE, "watch errors", || {
        get(addr, "/metrics").is_some_and(|m| {
            m.lines()
                .any(|l| l.starts_with("helmq_producer_watch_errors_total ") && !l.ends_with(" 0"))
        })
    });
    assert!(child.try_wait().unwrap().is_none(), "the producer exited");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = eventually_blocking(DEADLINE, "an exit after SIGTERM", || {
        child.try_wait().unwrap()
    });
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(status.success(), "{status}: {logs}");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("component watch failed"), "{logs}");
}
