//! Connecting to NATS: the shared `--nats-*` flag group, auth by creds file, nkey seed,
//! user/password or token, TLS with a private CA, and the server version check.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, ServerAddr};

/// Oldest nats-server helmq runs against: async-nats cannot create KV buckets on 2.9, and 2.9
/// silently ignores 2.10 stream features.
pub const MIN_SERVER: ServerVersion = ServerVersion {
    major: 2,
    minor: 10,
    patch: 0,
};

/// Errors connecting to NATS.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A file named by a flag could not be read.
    #[error("cannot read {what} {path}: {source}")]
    File {
        /// Which option named the file.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Two auth methods were given where one is expected.
    #[error("give one NATS auth method, not several (got {0})")]
    ConflictingAuth(String),
    /// `--nats-user` without `--nats-password` or the other way round.
    #[error("--nats-user and --nats-password go together")]
    PartialUserPassword,
    /// `--nats-url` names no server, or one of its comma-separated URLs cannot be read.
    #[error("invalid --nats-url {url:?}: {reason}")]
    InvalidUrl {
        /// The flag's value.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What the client reported.
        source: async_nats::ConnectError,
    },
    /// The server reports a version helmq does not support.
    #[error(
        "nats-server {found} at {url} is too old: helmq needs {MIN_SERVER} or newer \
         (KV buckets and 2.10 stream features); upgrade the server"
    )]
    ServerTooOld {
        /// The URL connected to.
        url: String,
        /// The version it reported.
        found: String,
    },
    /// The server's version string is not `major.minor.patch`.
    #[error("nats-server at {url} reports an unreadable version {found:?}")]
    UnreadableVersion {
        /// The URL connected to.
        url: String,
        /// The version it reported.
        found: String,
    },
    /// The server runs without JetStream.
    #[error(
        "nats-server at {url} has JetStream disabled: start it with -js (or jetstream {{}} in its config)"
    )]
    NoJetStream {
        /// The URL connected to.
        url: String,
    },
}

/// NATS connection flags, shared by every binary through `#[command(flatten)]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated: the nodes of a cluster, any of which will do; the
    /// client reconnects to another one when its node goes away.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// Credentials file (JWT and nkey seed), as `nsc` writes it.
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`).
    #[arg(long = "nats-nkey", env = "NATS_NKEY")]
    pub nkey: Option<PathBuf>,
    /// User name (with --nats-password).
    #[arg(long = "nats-user", env = "NATS_USER")]
    pub user: Option<String>,
    /// Password (with --nats-user).
    #[arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Auth token.
    #[arg(long = "nats-token", env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate; turns TLS on.
    #[arg(long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Seconds to wait for the first connection.
    #[arg(
        long = "nats-connect-timeout",
        env = "NATS_CONNECT_TIMEOUT",
        default_value_t = 10
    )]
    pub connect_timeout_secs: u64,
}

impl NatsArgs {
    /// The server addresses `--nats-url` lists (comma-separated, blanks around commas ignored).
    pub fn server_addrs(&self) -> Result<Vec<ServerAddr>, ConnectError> {
        let invalid = |reason: String| ConnectError::InvalidUrl {
            url: self.url.clone(),
            reason,
        };
        let addrs = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<ServerAddr>()
                    .map_err(|e| invalid(format!("{part:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(invalid("no server URL given".into()));
        }
        Ok(addrs)
    }

    /// Flags for a plain connection to `url`.
    pub fn with_url(url: impl Into<String>) -> Self {
        NatsArgs {
            url: url.into(),
            connect_timeout_secs: 10,
            ..NatsArgs::default()
        }
    }

    /// The client options these flags describe.
    pub async fn options(&self, client_name: &str) -> Result<ConnectOptions, ConnectError> {
        let mut methods = Vec::new();
        if self.creds.is_some() {
            methods.push("--nats-creds");
        }
        if self.nkey.is_some() {
            methods.push("--nats-nkey");
        }
        if self.user.is_some() || self.password.is_some() {
            methods.push("--nats-user/--nats-password");
        }
        if self.token.is_some() {
            methods.push("--nats-token");
        }
        if methods.len() > 1 {
            return Err(ConnectError::ConflictingAuth(methods.join(", ")));
        }
        let mut options = ConnectOptions::new();
        if let Some(path) = &self.creds {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| ConnectError::File {
                        what: "credentials file",
                        path: path.clone(),
                        source,
                    })?;
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|source| ConnectError::File {
                what: "nkey seed file",
                path: path.clone(),
                source,
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                options = options.user_and_password(user.clone(), password.clone());
            }
            (None, None) => {}
            _ => return Err(ConnectError::PartialUserPassword),
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            // Fail here with the path rather than later with a TLS handshake error.
            std::fs::metadata(ca).map_err(|source| ConnectError::File {
                what: "TLS CA file",
                path: ca.clone(),
                source,
            })?;
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        Ok(options
            .name(client_name)
            .connection_timeout(Duration::from_secs(self.connect_timeout_secs.max(1))))
    }
}

/// A nats-server version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl ServerVersion {
    /// Parses `2.10.27` (a `v` prefix and a `-suffix` are tolerated).
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let core = text.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(ServerVersion {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Refuses servers older than [`MIN_SERVER`] and servers without JetStream.
pub fn check_server(
    url: &str,
    version: &str,
    jetstream: bool,
) -> Result<ServerVersion, ConnectError> {
    let parsed = ServerVersion::parse(version).ok_or_else(|| ConnectError::UnreadableVersion {
        url: url.to_owned(),
        found: version.to_owned(),
    })?;
    if parsed < MIN_SERVER {
        return Err(ConnectError::ServerTooOld {
            url: url.to_owned(),
            found: version.to_owned(),
        });
    }
    if !jetstream {
        return Err(ConnectError::NoJetStream {
            url: url.to_owned(),
        });
    }
    Ok(parsed)
}

/// Connects with `args`, naming the connection `client_name`, and checks the server.
pub async fn connect(args: &NatsArgs, client_name: &str) -> Result<Client, ConnectError> {
    Ok(Connection::open(args, client_name).await?.client)
}

/// A checked NATS connection that logs its events and knows when it has closed, so a process
/// can drain it and wait for the end (`drain()` returns at once; exiting right after it loses
/// messages: `docs/ARCHITECTURE.md`, "JetStream behaviours helmq relies on").
#[derive(Debug, Clone)]
pub struct Connection {
    client: Client,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    /// Connects with `args` (auth, TLS), naming the connection `client_name`, and refuses
    /// servers that are too old or lack JetStream.
    pub async fn open(args: &NatsArgs, client_name: &str) -> Result<Connection, ConnectError> {
        // async-nats reads a single string as one URL: the list is split here.
        let servers = args.server_addrs()?;
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let options = args
            .options(client_name)
            .await?
            .event_callback(move |event| {
                let closed_tx = closed_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Closed => {
                            closed_tx.send_replace(true);
                        }
                        async_nats::Event::Connected => tracing::info!("connected to NATS"),
                        async_nats::Event::Draining => {
                            tracing::info!("draining the NATS connection")
                        }
                        other => tracing::warn!(event = %other, "NATS connection event"),
                    }
                }
            });
        let client = options
            .connect(servers)
            .await
            .map_err(|source| ConnectError::Connect {
                url: args.url.clone(),
                source,
            })?;
        let info = client.server_info();
        check_server(&args.url, &info.version, info.jetstream)?;
        Ok(Connection { client, closed })
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A JetStream context on this connection.
    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// Drains the connection (flushing what was published, finishing subscriptions) and waits
    /// at most `deadline` for it to close. Returns whether it closed in time.
    pub async fn drain(&self, deadline: Duration) -> bool {
        if let Err(error) = self.client.drain().await {
            tracing::warn!(%error, "cannot drain the NATS connection");
            return false;
        }
        let mut closed = self.closed.clone();
        match tokio::time::timeout(deadline, closed.wait_for(|c| *c)).await {
            Ok(Ok(_)) => {
                tracing::info!("NATS connection drained and closed");
                true
            }
            _ => {
                tracing::warn!(?deadline, "NATS connection did not close in time");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(
            ServerVersion::parse("2.10.27").map(|v| v.to_string()),
            Some("2.10.27".into())
        );
        assert_eq!(
            ServerVersion::parse("v2.15.1-beta").map(|v| v.minor),
            Some(15)
        );
        assert_eq!(ServerVersion::parse("2.11").map(|v| v.patch), Some(0));
        assert_eq!(ServerVersion::parse("two"), None);
        assert!(ServerVersion::parse("2.9.25") < Some(MIN_SERVER));
        assert!(ServerVersion::parse("2.10.0") >= Some(MIN_SERVER));
    }

    #[test]
    fn old_servers_and_servers_without_jetstream_are_refused_with_the_reason() {
        let err = check_server("nats://h:4222", "2.9.10", true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nats-server 2.9.10 at nats://h:4222 is too old: helmq needs 2.10.0 or newer \
             (KV buckets and 2.10 stream features); upgrade the server"
        );
        let err = check_server("nats://h:4222", "2.10.1", false).unwrap_err();
        assert!(err.to_string().contains("JetStream disabled"), "{err}");
        assert!(matches!(
            check_server("u", "garbage", true),
            Err(ConnectError::UnreadableVersion { .. })
        ));
        assert!(check_server("u", "2.12.0", true).is_ok());
    }

    #[test]
    fn url_lists_are_split_on_commas() {
        let args = NatsArgs::with_url("nats://a:4222, b:4223,tls://c:4224,");
        let addrs: Vec<String> = args
            .server_addrs()
            .unwrap()
            .iter()
            .map(|a| format!("{}:{}", a.host(), a.port()))
            .collect();
        assert_eq!(addrs, ["a:4222", "b:4223", "c:4224"]);
        assert_eq!(
            NatsArgs::with_url(" , ")
                .server_addrs()
                .unwrap_err()
                .to_string(),
            "invalid --nats-url \" , \": no server URL given"
        );
        let err = NatsArgs::with_url("nats://a:4222,http://b")
            .server_addrs()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid --nats-url \"nats://a:4222,http://b\": \"http://b\": "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn conflicting_or_partial_auth_and_missing_files_are_clear_errors() {
        let mut args = NatsArgs::with_url("nats://127.0.0.1:1");
        args.token = Some("t".into());
        args.user = Some("u".into());
        args.password = Some("p".into());
        let err = args.options("test").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "give one NATS auth method, not several (got --nats-user/--nats-password, --nats-token)"
        );

        let mut args = NatsArgs::with_url("nats://127.0.0.1:1");
        args.user = Some("u".into());
        assert_eq!(
            args.options("test").await.unwrap_err().to_string(),
            "--nats-user and --nats-password go together"
        );

        for (field, what) in [
            ("creds", "credentials file"),
            ("nkey", "nkey seed file"),
            ("tls", "TLS CA file"),
        ] {
            let mut args = NatsArgs::with_url("nats://127.0.0.1:1");
            let path = PathBuf::from("/nonexistent/helmq-test");
            match field {
                "creds" => args.creds = Some(path),
                "nkey" => args.nkey = Some(path),
                _ => args.tls_ca = Some(path),
            }
            let err = args.options("test").await.unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("cannot read {what} /nonexistent/helmq-test: ")),
                "{err}"
            );
        }
    }
}
