//! [`Charts`]: the case's chart repository on 127.0.0.1, serving charts of
//! `tests/fixtures/charts/`, and the Component configs that name them.

use std::path::{Path, PathBuf};

use helmq_tests::workspace_root;
use serde_json::{Value, json};

use super::run_ok;

/// The case's chart repository.
#[derive(Debug, Clone)]
pub(crate) struct Charts {
    url: String,
    dir: PathBuf,
    namespace: String,
}

impl Charts {
    /// Packages each of `charts` at 0.1.0 and 0.2.0 into `dir` with `helm` and serves them;
    /// `namespace` is where [`Charts::hello_config`] releases.
    pub(super) async fn serve(helm: &str, charts: &[&str], dir: &Path, namespace: &str) -> Charts {
        std::fs::create_dir_all(dir).expect("repository dir");
        for chart in charts {
            let path = workspace_root().join("tests/fixtures/charts").join(chart);
            for version in ["0.1.0", "0.2.0"] {
                run_ok(
                    helm,
                    &[
                        "package",
                        path.to_str().expect("utf-8 path"),
                        "--version",
                        version,
                        "-d",
                        dir.to_str().expect("utf-8 path"),
                    ],
                )
                .await;
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the chart repository");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        run_ok(
            helm,
            &[
                "repo",
                "index",
                dir.to_str().expect("utf-8 path"),
                "--url",
                &url,
            ],
        )
        .await;
        let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Charts {
            url,
            dir: dir.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// The chart repository's URL, e.g. `http://127.0.0.1:40123`.
    pub(crate) fn repo_url(&self) -> &str {
        &self.url
    }

    /// The package of `chart` at `version` the repository serves.
    pub(crate) fn chart_package(&self, chart: &str, version: &str) -> PathBuf {
        self.dir.join(format!("{chart}-{version}.tgz"))
    }

    /// A source-form config of a chart from the repository.
    pub(crate) fn chart_config(
        &self,
        chart: &str,
        version: &str,
        release: &str,
        release_namespace: &str,
        manage_namespace: bool,
        values: Value,
    ) -> Value {
        json!({
            "releaseName": release,
            "releaseNamespace": release_namespace,
            "manageNamespace": manage_namespace,
            "source": {
                "type": "http",
                "repository": {"url": self.url, "name": "e2e"},
                "chart": {"name": chart, "version": version}
            },
            "values": values
        })
    }

    /// The `hello` chart (one ConfigMap) released into the case's namespace.
    pub(crate) fn hello_config(&self, release: &str, version: &str, greeting: &str) -> Value {
        self.chart_config(
            "hello",
            version,
            release,
            &self.namespace,
            false,
            json!({"greeting": greeting, "nested": {"list": [1, 2, 3], "map": {"a": "b"}}}),
        )
    }
}
