//! [`NatsCluster`]: three `nats-server` processes on 127.0.0.1, joined by routes into one
//! JetStream cluster, each with its own store and a config file written to a temporary
//! directory; a node can be killed and restarted on its store, the leader of a stream found,
//! and everything is killed and removed on drop.
//!
//! Which binary runs is [`default_binary`]'s choice (`HELMQ_NATS_SERVER`); a cluster never
//! attaches to `NATS_URL`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::{INSTALL_HINT, default_binary, spawn_quiet, wait_ready};

/// Nodes in a [`NatsCluster`].
pub const NODES: usize = 3;

/// How long a node or the cluster gets to come up.
const START_DEADLINE: Duration = Duration::from_secs(90);
/// Attempts to start a cluster, each on fresh ports (see [`NatsCluster::start_binary`]).
const START_ATTEMPTS: usize = 3;
/// How long all running nodes must name the same meta leader when it does not (yet) report
/// its peers current.
const AGREED_ENOUGH: Duration = Duration::from_secs(3);

/// One node of a [`NatsCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    http_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Three `nats-server` nodes with JetStream, routed into one cluster named `helmq`; dropping
/// it kills every node and deletes their stores.
#[derive(Debug)]
pub struct NatsCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    _root: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts a cluster of the default server binary and waits until it has a JetStream meta
    /// leader. Panics with the reason (and the nodes' logs) when it cannot.
    pub fn start() -> NatsCluster {
        let binary =
            default_binary().unwrap_or_else(|| panic!("no nats-server found: {INSTALL_HINT}"));
        NatsCluster::start_binary(&binary)
    }

    /// Starts a cluster of `binary`. Its ports are free when chosen but not held, so another
    /// process may take one before a node binds it: a node that exits while the cluster forms
    /// makes it start again on fresh ports, up to three times.
    pub fn start_binary(binary: &Path) -> NatsCluster {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match NatsCluster::try_start(binary) {
                Ok(cluster) => return cluster,
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "the cluster did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// One attempt of [`start_binary`](Self::start_binary).
    fn try_start(binary: &Path) -> Result<NatsCluster, String> {
        let root = tempfile::Builder::new()
            .prefix("helmq-cluster-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir for the cluster: {e}"))?;
        let ports = free_ports(NODES * 3);
        let nodes: Vec<Node> = (0..NODES)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                port: ports[i * 3],
                cluster_port: ports[i * 3 + 1],
                http_port: ports[i * 3 + 2],
                dir: root.path().join(format!("n{}", i + 1)),
                child: None,
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("\"nats-route://127.0.0.1:{}\"", n.cluster_port))
            .collect();
        for node in &nodes {
            std::fs::create_dir_all(node.dir.join("js"))
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", node.dir.display()));
            let config = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http}\"\n\
                 jetstream {{\n  store_dir: \"{store}\"\n}}\n\
                 cluster {{\n  name: helmq\n  listen: \"127.0.0.1:{cluster}\"\n  routes: [{routes}]\n}}\n",
                name = node.name,
                port = node.port,
                http = node.http_port,
                store = node.dir.join("js").display(),
                cluster = node.cluster_port,
                routes = routes.join(", "),
            );
            std::fs::write(node.dir.join("server.conf"), config)
                .unwrap_or_else(|e| panic!("cannot write the config of {}: {e}", node.name));
        }
        let mut cluster = NatsCluster {
            binary: binary.to_owned(),
            nodes,
            _root: root,
        };
        for i in 0..NODES {
            cluster.boot(i)?;
        }
        cluster.wait_for_meta_leader()?;
        Ok(cluster)
    }

    /// The client URL of node `i`, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node's client URL, comma-separated, as `--nats-url` takes them.
    pub fn urls(&self) -> String {
        (0..NODES)
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `server_name` of node `i` (`n1`, `n2`, `n3`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The client port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Whether node `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The binary's version as it reports it, e.g. `2.10.27`.
    pub fn version(&self) -> Option<String> {
        crate::binary_version(&self.binary)
    }

    /// Kills node `i` (SIGKILL), keeping its store.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store (after [`kill`](Self::kill)) and waits
    /// until it accepts clients and sees a meta leader.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        if let Err(why) = self.boot(i).and_then(|()| self.wait_for_meta_leader()) {
            panic!("{why}");
        }
    }

    /// The `server_name` of the leader of `stream`, from its stream info (`cluster.leader`);
    /// `None` while it has none or cannot be asked.
    pub async fn stream_leader(
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> Option<String> {
        let mut stream = js.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster.as_ref()?.leader.clone()
    }

    /// The node's `/jsz` monitoring page, parsed.
    fn jsz(&self, i: usize) -> Option<serde_json::Value> {
        let node = &self.nodes[i];
        node.child.as_ref()?;
        let mut stream = TcpStream::connect(("127.0.0.1", node.http_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let body = response.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }

    /// Waits until every running node names the same JetStream meta leader and the leader
    /// reports every other running node as a current peer (else an R3 stream may not find its
    /// peers yet), or until they have agreed on the leader for [`AGREED_ENOUGH`]: a 2.10 meta
    /// leader with nothing to replicate was seen (in CI, under load) not to report its peers
    /// current for 30 s while all three nodes named it.
    fn wait_for_meta_leader(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let mut seen = Vec::new();
        let mut agreed_since: Option<(Option<String>, Instant)> = None;
        while Instant::now() < deadline {
            let exited = self.exited();
            if !exited.is_empty() {
                return Err(format!(
                    "node(s) {exited:?} exited while the cluster formed; logs:\n{}",
                    self.logs()
                ));
            }
            let running: Vec<usize> = (0..NODES).filter(|&i| self.is_running(i)).collect();
            seen = running
                .iter()
                .map(|&i| {
                    self.jsz(i)
                        .and_then(|j| j["meta_cluster"]["leader"].as_str().map(str::to_owned))
                        .filter(|leader| !leader.is_empty())
                })
                .collect();
            let agreed = seen.iter().all(Option::is_some) && seen.windows(2).all(|w| w[0] == w[1]);
            let leader = seen.first().cloned().flatten();
            if !agreed {
                agreed_since = None;
            } else if agreed_since.as_ref().is_none_or(|(l, _)| *l != leader) {
                agreed_since = Some((leader.clone(), Instant::now()));
            }
            if agreed_since
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() >= AGREED_ENOUGH)
            {
                return Ok(());
            }
            if agreed
                && let Some(leader) = leader.and_then(|name| self.index_of(&name))
                && self.peers_current(leader, &running)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the cluster has no JetStream meta leader with current peers after {START_DEADLINE:?} \
             (leaders seen: {seen:?}); logs:\n{}",
            self.logs()
        ))
    }

    /// The names of the nodes started and not killed whose process has exited.
    fn exited(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut()
                && child.try_wait().is_ok_and(|status| status.is_some())
            {
                exited.push(node.name.clone());
            }
        }
        exited
    }

    /// Whether the meta leader `leader` reports every other node of `running` as current.
    fn peers_current(&self, leader: usize, running: &[usize]) -> bool {
        let Some(jsz) = self.jsz(leader) else {
            return false;
        };
        let replicas = jsz["meta_cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        running.iter().filter(|&&i| i != leader).all(|&i| {
            replicas
                .iter()
                .any(|r| r["name"] == self.name(i) && r["current"] == true)
        })
    }

    fn boot(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let log = node.dir.join("server.log");
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(node.dir.join("server.conf"))
            .arg("-l")
            .arg(&log);
        let mut child = spawn_quiet(command, &self.binary);
        if let Err(e) = wait_ready(&mut child, node.port) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "nats-server node {} did not start: {e}; log:\n{}",
                node.name,
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        self.nodes[i].child = Some(child);
        Ok(())
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(n.dir.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("== {}\n{}", n.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
    }
}

/// `n` distinct free ports: all probed while held, so none repeats.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .unwrap_or_else(|e| panic!("cannot read a bound port: {e}"))
        })
        .collect()
}
