//! `helmqctl preflight`: is there a Kubernetes cluster behind the current kubeconfig, and does
//! it have the Component CRD (installed on request)? `just up` runs it before starting
//! anything.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// How long the API server gets to answer its version.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Why the cluster cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// No usable kubeconfig.
    #[error("cannot load a kubeconfig (KUBECONFIG={kubeconfig}): {source}")]
    Kubeconfig {
        /// The KUBECONFIG value, or `unset (~/.kube/config)`.
        kubeconfig: String,
        /// What the loader said.
        source: kube::config::InferConfigError,
    },
    /// The cluster refused or failed a request.
    #[error("no Kubernetes cluster reachable at {url}: {source}")]
    Unreachable {
        /// The API server URL from the kubeconfig.
        url: String,
        /// What the client said.
        source: kube::Error,
    },
    /// The cluster did not answer in time.
    #[error("no Kubernetes cluster reachable at {url}: no answer within {}s", ANSWER_WITHIN.as_secs())]
    NoAnswer {
        /// The API server URL from the kubeconfig.
        url: String,
    },
}

/// Checks the cluster of the current kubeconfig and, with `install_crd`, creates the Component
/// CRD when it is missing or brings it up to this version's schema; says what it found in one
/// line.
pub async fn check(install_crd: bool) -> Result<String, PreflightError> {
    let kubeconfig =
        std::env::var("KUBECONFIG").unwrap_or_else(|_| "unset (~/.kube/config)".into());
    let config = kube::Config::infer()
        .await
        .map_err(|source| PreflightError::Kubeconfig { kubeconfig, source })?;
    let url = config.cluster_url.to_string();
    let unreachable = |source| PreflightError::Unreachable {
        url: url.clone(),
        source,
    };
    let client = kube::Client::try_from(config).map_err(unreachable)?;
    let version = tokio::time::timeout(ANSWER_WITHIN, client.apiserver_version())
        .await
        .map_err(|_| PreflightError::NoAnswer { url: url.clone() })?
        .map_err(unreachable)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = helmq_schemas::component::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let current = crds.get_opt(&name).await.map_err(unreachable)?;
    let present = current.is_some();
    // An older CRD prunes the status fields this version writes (e.g. the issued job, without
    // which the producer cannot issue a job): brought up to date on request, reported otherwise.
    let up_to_date = current.is_some_and(|c| c.spec.versions == crd.spec.versions);
    let crd_state = match (present, install_crd) {
        (true, _) if up_to_date => "present".to_owned(),
        (true, true) => {
            crds.patch(
                &name,
                &PatchParams::apply("helmqctl").force(),
                &Patch::Apply(&crd),
            )
            .await
            .map_err(unreachable)?;
            "updated to this version's schema".to_owned()
        }
        (true, false) => "present but older than this version (run with --install-crd, or kubectl apply -f deploy/crds/)".to_owned(),
        (false, true) => {
            crds.create(&PostParams::default(), &crd)
                .await
                .map_err(unreachable)?;
            "installed".to_owned()
        }
        (false, false) => {
            "missing (run with --install-crd, or kubectl apply -f deploy/crds/)".to_owned()
        }
    };
    Ok(format!(
        "cluster {url} (Kubernetes {}.{}) reachable; CRD {name} {crd_state}",
        version.major, version.minor
    ))
}
