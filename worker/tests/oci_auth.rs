//! OCI registry authentication of `HelmCli` against the fake `helm` and the fake `kubectl` in
//! tests/fixtures: the Secret is read with kubectl, helm logs in with the password on stdin, and
//! secrets never show up in argv, in errors or in files left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use helmq_schemas::config::{OciAuthentication, SecretRef};
use helmq_schemas::{ChartSource, HelmConfig};
use helmq_worker::HelmCli;
use helmq_worker::driver::{Apply, DriverError, HelmCliSettings, HelmDriver, KubectlAction};
use helmq_worker::ownership::{Identity, Owner};
use helmq_worker::policy::Failure;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const REGISTRY: &str = "registry.example.com:5000";
const CHART: &str = "oci://registry.example.com:5000/charts/nginx:1.2.3";
const T: Duration = Duration::from_secs(30);

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// How the fake kubectl of a fixture behaves.
enum Kubectl {
    /// Answers from the fixture's Secrets.
    Secrets,
    /// Every call fails with this stderr.
    Failing(&'static str),
    /// `kubectl_bin` is `None`.
    Disabled,
    /// `kubectl_bin` names no executable.
    Missing,
}

struct Fixture {
    dir: tempfile::TempDir,
    cache: PathBuf,
    state: PathBuf,
    kubeconfig: PathBuf,
    cli: HelmCli,
}

impl Fixture {
    fn new(kubectl: Kubectl) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
        let mut settings = HelmCliSettings::new(fixture_path("fake-helm"), &cache);
        settings.kubeconfig = Some(kubeconfig.clone());
        settings.allowed_secret_namespaces = vec!["shared".into()];
        settings.kubectl_bin = match kubectl {
            Kubectl::Disabled => None,
            Kubectl::Missing => Some(dir.path().join("no-such-kubectl")),
            Kubectl::Secrets | Kubectl::Failing(_) => {
                // Tests cannot set environment variables (unsafe), so a wrapper does.
                let fail = match kubectl {
                    Kubectl::Failing(stderr) => format!("export FAKE_KUBECTL_FAIL='{stderr}'\n"),
                    _ => String::new(),
                };
                let wrapper = dir.path().join("kubectl");
                std::fs::write(
                    &wrapper,
                    format!(
                        "#!/bin/sh\nexport FAKE_KUBECTL_SECRETS='{}'\nexport FAKE_KUBECTL_LOG='{}'\n{fail}exec '{}' \"$@\"\n",
                        dir.path().join("secrets").display(),
                        dir.path().join("kubectl.log").display(),
                        fixture_path("fake-kubectl").display(),
                    ),
                )
                .unwrap();
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
                Some(wrapper)
            }
        };
        let cli = HelmCli::new(settings).unwrap();
        let state = cache.join("helm/data/fake-helm-state");
        std::fs::create_dir_all(&state).unwrap();
        Fixture {
            dir,
            cache,
            state,
            kubeconfig,
            cli,
        }
    }

    /// Makes `REGISTRY` private, accepting only these credentials.
    fn private_registry(&self, credentials: serde_json::Value) {
        std::fs::write(
            self.state.join("private-registries.json"),
            json!({ REGISTRY: credentials }).to_string(),
        )
        .unwrap();
    }

    /// Stores a Secret with these `data` values (base64-encoded here).
    fn secret(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let dir = self.dir.path().join("secrets").join(namespace);
        std::fs::create_dir_all(&dir).unwrap();
        // Every Secret here names the fixture's registry (credentials go nowhere else).
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .chain(&[("registry", REGISTRY)])
            .map(|(k, v)| ((*k).to_owned(), base64(v).into()))
            .collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": data,
        });
        std::fs::write(dir.join(format!("{name}.json")), secret.to_string()).unwrap();
    }

    fn read(&self, path: impl AsRef<Path>) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn calls(&self) -> Vec<Vec<String>> {
        lines(&self.read(self.state.join("calls.log")))
            .iter()
            .map(|c| serde_json::from_value(c["argv"].clone()).unwrap())
            .collect()
    }

    fn subcommands(&self) -> Vec<String> {
        self.calls().iter().map(|argv| argv[0].clone()).collect()
    }

    fn kubectl_calls(&self) -> Vec<String> {
        lines(&self.read(self.dir.path().join("kubectl.log")))
            .iter()
            .map(|c| {
                let argv: Vec<String> = serde_json::from_value(c["argv"].clone()).unwrap();
                argv.join(" ")
            })
            .collect()
    }

    fn logins(&self) -> Vec<serde_json::Value> {
        lines(&self.read(self.state.join("logins.log")))
    }

    async fn apply(&self, config: &HelmConfig) -> Result<(), DriverError> {
        let owner = Owner {
            namespace: "apps".into(),
            name: "web".into(),
            uid: String::new(),
        };
        self.cli
            .apply(
                Apply {
                    config,
                    timeout: T,
                    own_namespace: "apps",
                    lease_revision: 1,
                    identity: &Identity::Worker,
                    owner: &owner,
                    install: false,
                },
                &CancellationToken::new(),
            )
            .await
            .map(drop)
    }

    /// Every file the worker and the fakes wrote (not the fake registry's own credentials),
    /// for a search for leaked secrets.
    fn all_files_text(&self) -> String {
        fn walk(dir: &Path, out: &mut String) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_none_or(|e| e != "tgz")
                    && !path.ends_with("private-registries.json")
                {
                    out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
        let mut out = String::new();
        walk(&self.cache, &mut out);
        out.push_str(&self.read(self.dir.path().join("kubectl.log")));
        out
    }
}

fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn base64(text: &str) -> String {
    // A tiny encoder, so the test does not depend on the crate under test for it.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn oci_config(secret: Option<(&str, Option<&str>)>) -> HelmConfig {
    HelmConfig {
        release_name: "web".into(),
        release_namespace: "apps".into(),
        // The kubectl calls here are the registry Secret's only.
        manage_namespace: false,
        source: ChartSource::Oci {
            chart: CHART.into(),
            authentication: secret.map(|(name, namespace)| OciAuthentication {
                method: "registry".into(),
                secret_ref: SecretRef {
                    name: name.into(),
                    namespace: namespace.map(str::to_owned),
                },
            }),
        },
        values: serde_json::Map::new(),
        values_from: Vec::new(),
        service_account_name: None,
        adopt: false,
        remediation: Default::default(),
        test: Default::default(),
        drift: Default::default(),
    }
}

#[test]
fn the_test_encoder_is_base64() {
    assert_eq!(base64(""), "");
    assert_eq!(base64("f"), "Zg==");
    assert_eq!(base64("fo"), "Zm8=");
    assert_eq!(base64("foo"), "Zm9v");
    assert_eq!(base64("hunter2"), "aHVudGVyMg==");
}

#[tokio::test]
async fn a_private_chart_is_pulled_after_a_login_with_a_token() {
    let f = Fixture::new(Kubectl::Secrets);
    f.private_registry(json!({"password": "t0k3n-s3cret"}));

    // Without authentication the registry answers 401, as a real one does.
    let err = f.apply(&oci_config(None)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("response status code 401: unauthorized: authentication required"),
        "{err}"
    );

    f.secret("apps", "creds", &[("token", "t0k3n-s3cret")]);
    let config = oci_config(Some(("creds", None)));
    f.apply(&config).await.unwrap();
    f.apply(&config).await.unwrap();
    // One login and one pull; the second run installs from the cache.
    assert_eq!(
        f.subcommands(),
        ["pull", "registry", "pull", "upgrade", "upgrade"]
    );
    let login = &f.calls()[1];
    assert_eq!(
        login.join(" "),
        format!(
            "registry login --username=helmq --password-stdin --kubeconfig {} -- {REGISTRY}",
            f.kubeconfig.display()
        )
    );
    assert_eq!(
        f.kubectl_calls(),
        [format!(
            "get secret --namespace=apps -o json --kubeconfig {} -- creds",
            f.kubeconfig.display()
        )]
    );
    let logins = f.logins();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0]["host"], REGISTRY);
    assert_eq!(logins[0]["username"], "helmq");
    // The login lived in a registry config file of that pull alone, deleted after it.
    let registry_config = PathBuf::from(logins[0]["registry_config"].as_str().unwrap());
    assert!(registry_config.starts_with(&f.cache), "{registry_config:?}");
    assert!(!registry_config.exists(), "{registry_config:?}");
    assert_eq!(std::fs::read_dir(f.cache.join("tmp")).unwrap().count(), 0);
    assert!(
        !f.cache.join("helm/config/registry/config.json").exists(),
        "no login in the shared helm config"
    );
    assert!(!f.all_files_text().contains("t0k3n-s3cret"));
}

#[tokio::test]
async fn a_private_chart_is_pulled_after_a_login_with_username_and_password() {
    let f = Fixture::new(Kubectl::Secrets);
    f.private_registry(json!({"username": "robot", "password": "hunter2-pw"}));
    f.secret(
        "shared",
        "creds",
        &[("username", "robot"), ("password", "hunter2-pw")],
    );
    f.apply(&oci_config(Some(("creds", Some("shared")))))
        .await
        .unwrap();
    assert_eq!(f.subcommands(), ["registry", "pull", "upgrade"]);
    assert_eq!(f.logins()[0]["username"], "robot");
    assert!(f.kubectl_calls()[0].starts_with("get secret --namespace=shared -o json"));
    let all = f.all_files_text();
    assert!(all.contains("--password-stdin"), "the calls were recorded");
    assert!(!all.contains("hunter2-pw"));
}

#[tokio::test]
async fn a_wrong_password_fails_the_login_without_showing_it() {
    let f = Fixture::new(Kubectl::Secrets);
    f.private_registry(json!({"username": "robot", "password": "right-pw"}));
    f.secret(
        "apps",
        "creds",
        &[("username", "robot"), ("password", "wrong-pw-1234")],
    );
    let err = f
        .apply(&oci_config(Some(("creds", None))))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "helm registry failed: Error: authenticating to \"{REGISTRY}\""
        )),
        "{text}"
    );
    assert!(!text.contains("wrong-pw-1234"), "{text}");
    assert!(!format!("{err:?}").contains("wrong-pw-1234"));
    assert_eq!(
        f.subcommands(),
        ["registry"],
        "no pull after a failed login"
    );
    assert!(!f.all_files_text().contains("wrong-pw-1234"));
    assert_eq!(std::fs::read_dir(f.cache.join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn a_missing_secret_is_a_permanent_error_naming_it() {
    let f = Fixture::new(Kubectl::Secrets);
    f.private_registry(json!({}));
    let err = f
        .apply(&oci_config(Some(("creds", None))))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"cannot read registry secret apps/creds: Error from server (NotFound): secrets "creds" not found"#
    );
    assert_eq!(err.failure(), Failure::Permanent);
    assert!(f.subcommands().is_empty(), "helm never ran");
}

#[tokio::test]
async fn a_secret_without_credentials_is_a_permanent_error() {
    let f = Fixture::new(Kubectl::Secrets);
    f.private_registry(json!({}));
    f.secret(
        "apps",
        "creds",
        &[("username", "robot"), ("pass", "hunter2-pw")],
    );
    let err = f
        .apply(&oci_config(Some(("creds", None))))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot log in to registry {REGISTRY} with secret apps/creds: the secret holds no \
             token and no password (keys found: pass, registry, username); it needs `token` or both \
             `username` and `password`"
        )
    );
    assert_eq!(err.failure(), Failure::Permanent);
    assert!(!format!("{err:?}").contains("hunter2-pw"));
    assert!(f.subcommands().is_empty(), "helm never ran");
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_transient_error() {
    let f = Fixture::new(Kubectl::Failing(
        "The connection to the server 10.0.0.1:6443 was refused - did you specify the right host or port?",
    ));
    let err = f
        .apply(&oci_config(Some(("creds", None))))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DriverError::Kubectl { action: KubectlAction::ReadSecret { secret }, .. } if secret == "apps/creds"),
        "{err:?}"
    );
    assert_eq!(err.failure(), Failure::Transient, "{err}");
}

#[tokio::test]
async fn without_kubectl_authenticated_sources_fail_clearly() {
    let f = Fixture::new(Kubectl::Disabled);
    let err = f
        .apply(&oci_config(Some(("creds", None))))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot log in to registry {REGISTRY} with secret apps/creds: kubectl is disabled \
             on this worker (set --kubectl-bin / HELMQ_KUBECTL_BIN)"
        )
    );
    assert_eq!(err.failure(), Failure::Permanent);

    let f = Fixture::new(Kubectl::Missing);
    let err = f
        .apply(&oci_config(Some(("creds", None))))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DriverError::Spawn { needed_to: Some(KubectlAction::ReadSecret { secret }), .. } if secret == "apps/creds"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("(needed to read registry secret apps/creds)"),
        "{err}"
    );
    assert_eq!(err.failure(), Failure::Transient);
}

#[tokio::test]
async fn public_oci_charts_need_no_kubectl() {
    let f = Fixture::new(Kubectl::Disabled);
    f.apply(&oci_config(None)).await.unwrap();
    assert_eq!(f.subcommands(), ["pull", "upgrade"]);
}

/// The attacks on registry credentials: each is refused before any login, with its reason.
#[tokio::test]
async fn credentials_never_cross_a_namespace_or_go_to_a_host_the_secret_does_not_name() {
    let f = Fixture::new(Kubectl::Secrets);
    f.private_registry(json!({}));
    f.secret("apps", "creds", &[("token", "t0k3n-s3cret")]);
    f.secret("kube-system", "creds", &[("token", "system-t0k3n")]);
    let with_chart = |chart: &str, namespace: Option<&str>| {
        let mut config = oci_config(Some(("creds", namespace)));
        if let ChartSource::Oci { chart: c, .. } = &mut config.source {
            *c = chart.into();
        }
        config
    };
    let cases = [
        (
            with_chart(CHART, Some("kube-system")),
            "cannot log in to registry registry.example.com:5000 with secret kube-system/creds: \
             the secret is not in the job's own namespace apps and namespace kube-system is not \
             in --allowed-secret-namespaces",
            "a Secret of another namespace",
        ),
        (
            with_chart("oci://attacker.example/x/y:1", None),
            "cannot log in to registry attacker.example with secret apps/creds: the secret names \
             no credentials for this registry (it names registry.example.com:5000); credentials \
             are only sent to a registry the secret names",
            "the job's host is not the Secret's",
        ),
        (
            with_chart("oci://REGISTRY.example.com:5001/charts/nginx:1.2.3", None),
            "cannot log in to registry REGISTRY.example.com:5001 with secret apps/creds: the \
             secret names no credentials for this registry (it names registry.example.com:5000); \
             credentials are only sent to a registry the secret names",
            "another port of the Secret's host",
        ),
    ];
    for (config, want, why) in cases {
        let err = f.apply(&config).await.unwrap_err();
        assert_eq!(err.to_string(), want, "{why}");
        assert_eq!(err.failure(), Failure::Permanent, "{why}");
    }
    assert!(f.logins().is_empty(), "no login anywhere");
    assert!(f.subcommands().is_empty(), "helm never ran");
    assert!(
        f.kubectl_calls().iter().all(|c| !c.contains("kube-system")),
        "the other namespace's Secret was never read: {:?}",
        f.kubectl_calls()
    );
    // A host that matches but for case is the Secret's registry.
    f.apply(&with_chart(
        "oci://Registry.Example.COM:5000/charts/nginx:1.2.3",
        None,
    ))
    .await
    .unwrap();
    assert_eq!(f.logins().len(), 1);
}
