//! The config parser's tables: both shapes, every field's checks and messages, defaults,
//! normalization and the validation of names, versions and references.

use serde_json::json;

use super::*;

const BITNAMI: &str = "https://repo.broadcom.com/bitnami-files";
const PROMETHEUS: &str = "https://prometheus-community.github.io/helm-charts";

fn http(url: &str, repo: &str, chart: &str, version: &str) -> ChartSource {
    ChartSource::Http {
        repository: Repository {
            url: url.to_owned(),
            name: repo.to_owned(),
        },
        chart: ChartRef {
            name: chart.to_owned(),
            version: version.to_owned(),
        },
    }
}

fn oci(chart: &str, secret: Option<(&str, Option<&str>)>) -> ChartSource {
    ChartSource::Oci {
        chart: chart.to_owned(),
        authentication: secret.map(|(name, namespace)| OciAuthentication {
            method: "registry".to_owned(),
            secret_ref: SecretRef {
                name: name.to_owned(),
                namespace: namespace.map(str::to_owned),
            },
        }),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => panic!("test values must be an object, got {other}"),
    }
}

fn expected(
    release_name: &str,
    release_namespace: &str,
    manage_namespace: bool,
    source: ChartSource,
    values: Value,
) -> HelmConfig {
    HelmConfig {
        release_name: release_name.to_owned(),
        release_namespace: release_namespace.to_owned(),
        manage_namespace,
        source,
        values: object(values),
        values_from: Vec::new(),
        service_account_name: None,
        adopt: false,
        remediation: Default::default(),
        test: Default::default(),
        drift: Default::default(),
    }
}

struct Valid {
    name: &'static str,
    /// Component namespace and name.
    component: (&'static str, &'static str),
    config: Value,
    expected: HelmConfig,
    /// JSON pointers into the normalized values and the value expected there.
    probes: Vec<(&'static str, Value)>,
}

fn nginx_values() -> Value {
    json!({"service": {"type": "ClusterIP"}, "replicaCount": 1})
}

fn nginx_advanced_values() -> Value {
    json!({
        "replicaCount": 3,
        "service": {
            "type": "LoadBalancer",
            "annotations": {
                "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
                "service.beta.kubernetes.io/aws-load-balancer-internal": "true"
            }
        },
        "ingress": {
            "enabled": true,
            "hostname": "www.example.com",
            "ingressClassName": "nginx",
            "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt-prod"},
            "tls": true,
            "extraTls": [
                {"hosts": ["www.example.com"], "secretName": "www-example-com-tls"},
                {"hosts": ["api.example.com"], "secretName": "api-example-com-tls"}
            ]
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"}
        },
        "autoscaling": {"enabled": true, "minReplicas": 3, "maxReplicas": 10, "targetCPU": 70},
        "podSecurityContext": {"enabled": true, "fsGroup": 1001},
        "containerSecurityContext": {
            "enabled": true,
            "runAsUser": 1001,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true
        }
    })
}

fn postgresql_values() -> Value {
    json!({
        "auth": {
            "postgresPassword": "s3cr3t-admin",
            "username": "app",
            "password": "s3cr3t-app",
            "database": "appdb"
        },
        "primary": {
            "persistence": {"enabled": true, "size": "20Gi", "storageClass": "standard"},
            "extendedConfiguration": "max_connections = 200\nshared_buffers = 256MB\nwork_mem = 8MB\n"
        },
        "metrics": {
            "enabled": true,
            "serviceMonitor": {"enabled": true, "namespace": "monitoring", "interval": "30s"}
        }
    })
}

fn redis_values() -> Value {
    json!({
        "architecture": "replication",
        "auth": {"enabled": true, "password": "redis-pass"},
        "master": {"persistence": {"size": "8Gi"}},
        "replica": {"replicaCount": 2, "persistence": {"size": "8Gi"}}
    })
}

fn wordpress_values() -> Value {
    json!({
        "wordpressUsername": "admin",
        "wordpressPassword": "wp-pass",
        "wordpressEmail": "admin@example.com",
        "wordpressBlogName": "Engineering Blog",
        "service": {"type": "ClusterIP"},
        "persistence": {"enabled": true, "size": "10Gi"},
        "mariadb": {
            "enabled": true,
            "architecture": "standalone",
            "auth": {
                "rootPassword": "root-pass",
                "database": "bitnami_wordpress",
                "username": "bn_wordpress",
                "password": "db-pass"
            },
            "primary": {"persistence": {"enabled": true, "size": "8Gi"}}
        }
    })
}

fn prometheus_values() -> Value {
    json!({
        "grafana": {"enabled": true, "adminPassword": "grafana-pass"},
        "alertmanager": {"enabled": true},
        "prometheus": {
            "prometheusSpec": {
                "retention": "15d",
                "serviceMonitorSelectorNilUsesHelmValues": false,
                "podMonitorSelectorNilUsesHelmValues": false,
                "storageSpec": {
                    "volumeClaimTemplate": {
                        "spec": {
                            "storageClassName": "standard",
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "50Gi"}}
                        }
                    }
                }
            }
        }
    })
}

fn valid_cases() -> Vec<Valid> {
    vec![
        Valid {
            name: "nginx source form",
            component: ("default", "nginx"),
            config: json!({
                "releaseName": "nginx",
                "releaseNamespace": "web",
                "source": {
                    "type": "http",
                    "repository": {"url": BITNAMI, "name": "bitnami"},
                    "chart": {"name": "nginx", "version": "18.2.4"}
                },
                "values": nginx_values()
            }),
            expected: expected(
                "nginx",
                "web",
                true,
                http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                nginx_values(),
            ),
            probes: vec![
                ("/service/type", json!("ClusterIP")),
                ("/replicaCount", json!(1)),
            ],
        },
        Valid {
            name: "nginx MVP form without namespace",
            component: ("default", "nginx"),
            config: json!({
                "repository": {"url": BITNAMI, "name": "bitnami"},
                "chart": {"name": "nginx", "version": "18.2.4"},
                "values": nginx_values()
            }),
            expected: expected(
                "default-nginx",
                "default",
                false,
                http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                nginx_values(),
            ),
            probes: vec![
                ("/service/type", json!("ClusterIP")),
                ("/replicaCount", json!(1)),
            ],
        },
        Valid {
            name: "nginx advanced",
            component: ("web", "frontend"),
            config: json!({
                "releaseName": "frontend",
                "releaseNamespace": "web-frontend",
                "manageNamespace": true,
                "source": {
                    "type": "http",
                    "repository": {"url": BITNAMI, "name": "bitnami"},
                    "chart": {"name": "nginx", "version": "18.2.4"}
                },
                "values": nginx_advanced_values()
            }),
            expected: expected(
                "frontend",
                "web-frontend",
                true,
                http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                nginx_advanced_values(),
            ),
            probes: vec![
                ("/replicaCount", json!(3)),
                ("/service/type", json!("LoadBalancer")),
                (
                    "/service/annotations/service.beta.kubernetes.io~1aws-load-balancer-type",
                    json!("nlb"),
                ),
                ("/ingress/extraTls/1/hosts/0", json!("api.example.com")),
                ("/resources/limits/memory", json!("512Mi")),
                ("/autoscaling/maxReplicas", json!(10)),
                ("/containerSecurityContext/runAsNonRoot", json!(true)),
            ],
        },
        Valid {
            name: "postgresql with metrics and extended configuration",
            component: ("databases", "orders-db"),
            config: json!({
                "releaseName": "orders-db",
                "releaseNamespace": "databases",
                "manageNamespace": false,
                "source": {
                    "type": "http",
                    "repository": {"url": BITNAMI, "name": "bitnami"},
                    "chart": {"name": "postgresql", "version": "16.2.1"}
                },
                "values": postgresql_values()
            }),
            expected: expected(
                "orders-db",
                "databases",
                false,
                http(BITNAMI, "bitnami", "postgresql", "16.2.1"),
                postgresql_values(),
            ),
            probes: vec![
                ("/auth/database", json!("appdb")),
                ("/primary/persistence/size", json!("20Gi")),
                ("/metrics/serviceMonitor/enabled", json!(true)),
                (
                    "/primary/extendedConfiguration",
                    json!("max_connections = 200\nshared_buffers = 256MB\nwork_mem = 8MB\n"),
                ),
            ],
        },
        Valid {
            name: "redis MVP form in cache-system",
            component: ("default", "redis"),
            config: json!({
                "repository": {"url": BITNAMI, "name": "bitnami"},
                "chart": {"name": "redis", "version": "20.2.1"},
                "namespace": "cache-system",
                "values": redis_values()
            }),
            expected: expected(
                "default-redis",
                "cache-system",
                true,
                http(BITNAMI, "bitnami", "redis", "20.2.1"),
                redis_values(),
            ),
            probes: vec![
                ("/architecture", json!("replication")),
                ("/replica/replicaCount", json!(2)),
            ],
        },
        Valid {
            name: "wordpress with mariadb",
            component: ("blog", "wordpress"),
            config: json!({
                "releaseName": "blog",
                "releaseNamespace": "blog",
                "source": {
                    "type": "http",
                    "repository": {"url": BITNAMI, "name": "bitnami"},
                    "chart": {"name": "wordpress", "version": "23.1.40"}
                },
                "values": wordpress_values()
            }),
            expected: expected(
                "blog",
                "blog",
                true,
                http(BITNAMI, "bitnami", "wordpress", "23.1.40"),
                wordpress_values(),
            ),
            probes: vec![
                ("/mariadb/enabled", json!(true)),
                ("/mariadb/auth/database", json!("bitnami_wordpress")),
                ("/wordpressBlogName", json!("Engineering Blog")),
            ],
        },
        Valid {
            name: "kube-prometheus-stack in monitoring",
            component: ("platform", "monitoring"),
            config: json!({
                "releaseName": "kube-prometheus-stack",
                "releaseNamespace": "monitoring",
                "source": {
                    "type": "http",
                    "repository": {"url": PROMETHEUS, "name": "prometheus-community"},
                    "chart": {"name": "kube-prometheus-stack", "version": "65.1.1"}
                },
                "values": prometheus_values()
            }),
            expected: expected(
                "kube-prometheus-stack",
                "monitoring",
                true,
                http(
                    PROMETHEUS,
                    "prometheus-community",
                    "kube-prometheus-stack",
                    "65.1.1",
                ),
                prometheus_values(),
            ),
            probes: vec![
                (
                    "/prometheus/prometheusSpec/storageSpec/volumeClaimTemplate/spec/resources/requests/storage",
                    json!("50Gi"),
                ),
                (
                    "/prometheus/prometheusSpec/storageSpec/volumeClaimTemplate/spec/accessModes/0",
                    json!("ReadWriteOnce"),
                ),
                ("/grafana/enabled", json!(true)),
            ],
        },
        Valid {
            name: "oci without authentication",
            component: ("default", "nginx"),
            config: json!({
                "releaseName": "nginx-oci",
                "releaseNamespace": "web",
                "source": {
                    "type": "oci",
                    "chart": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4"
                },
                "values": nginx_values()
            }),
            expected: expected(
                "nginx-oci",
                "web",
                true,
                oci(
                    "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
                    None,
                ),
                nginx_values(),
            ),
            probes: vec![("/service/type", json!("ClusterIP"))],
        },
        Valid {
            name: "oci with authentication",
            component: ("default", "nginx"),
            config: json!({
                "releaseName": "nginx-oci",
                "releaseNamespace": "web",
                "source": {
                    "type": "oci",
                    "chart": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
                    "authentication": {
                        "method": "registry",
                        "secretRef": {"name": "dockerhub-creds", "namespace": "helmq-system"}
                    }
                }
            }),
            expected: expected(
                "nginx-oci",
                "web",
                true,
                oci(
                    "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
                    Some(("dockerhub-creds", Some("helmq-system"))),
                ),
                json!({}),
            ),
            probes: vec![],
        },
        Valid {
            name: "oci registry with port, secret without namespace",
            component: ("apps", "app"),
            config: json!({
                "releaseName": "app",
                "releaseNamespace": "apps",
                "manageNamespace": false,
                "source": {
                    "type": "oci",
                    "chart": "oci://localhost:5000/charts/app:1.0.0",
                    "authentication": {
                        "method": "registry",
                        "secretRef": {"name": "local-registry", "namespace": ""}
                    }
                },
                "values": {"image": {"tag": "1.0.0"}}
            }),
            expected: expected(
                "app",
                "apps",
                false,
                oci(
                    "oci://localhost:5000/charts/app:1.0.0",
                    Some(("local-registry", None)),
                ),
                json!({"image": {"tag": "1.0.0"}}),
            ),
            probes: vec![("/image/tag", json!("1.0.0"))],
        },
        Valid {
            name: "MVP namespace equal to the component's",
            component: ("shop", "cart"),
            config: json!({
                "repository": {"url": BITNAMI, "name": "bitnami"},
                "chart": {"name": "redis", "version": "20.2.1"},
                "namespace": "shop"
            }),
            expected: expected(
                "shop-cart",
                "shop",
                false,
                http(BITNAMI, "bitnami", "redis", "20.2.1"),
                json!({}),
            ),
            probes: vec![],
        },
        Valid {
            name: "MVP explicit manageNamespace false, timeouts ignored",
            component: ("default", "redis"),
            config: json!({
                "repository": {"url": BITNAMI, "name": "bitnami"},
                "chart": {"name": "redis", "version": "20.2.1"},
                "namespace": "cache-system",
                "manageNamespace": false,
                "timeouts": {"install": "10m"},
                "values": null
            }),
            expected: expected(
                "default-redis",
                "cache-system",
                false,
                http(BITNAMI, "bitnami", "redis", "20.2.1"),
                json!({}),
            ),
            probes: vec![],
        },
        Valid {
            name: "values null, http authentication and unknown keys ignored",
            component: ("default", "nginx"),
            config: json!({
                "releaseName": "nginx",
                "releaseNamespace": "default",
                "manageNamespace": false,
                "timeouts": {"deploy": "5m"},
                "comment": "ignored",
                "source": {
                    "type": "http",
                    "repository": {"url": BITNAMI, "name": "bitnami"},
                    "chart": {"name": "nginx", "version": "18.2.4"},
                    "authentication": {}
                },
                "values": null
            }),
            expected: expected(
                "nginx",
                "default",
                false,
                http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                json!({}),
            ),
            probes: vec![],
        },
        Valid {
            name: "semver range version and dotted release name",
            component: ("default", "nginx"),
            config: json!({
                "releaseName": "nginx.v2",
                "releaseNamespace": "web",
                "source": {
                    "type": "http",
                    "repository": {"url": "http://charts.internal:8080/stable", "name": "internal"},
                    "chart": {"name": "nginx", "version": "~18.2"}
                }
            }),
            expected: expected(
                "nginx.v2",
                "web",
                true,
                http(
                    "http://charts.internal:8080/stable",
                    "internal",
                    "nginx",
                    "~18.2",
                ),
                json!({}),
            ),
            probes: vec![],
        },
        Valid {
            name: "a tenant's ServiceAccount and adoption",
            component: ("team-a", "web"),
            config: json!({
                "releaseName": "web",
                "releaseNamespace": "team-a",
                "serviceAccountName": "helmq-deployer",
                "adopt": true,
                "source": {
                    "type": "http",
                    "repository": {"url": "http://charts.internal:8080/stable", "name": "internal"},
                    "chart": {"name": "nginx", "version": "18.2.0"}
                }
            }),
            expected: HelmConfig {
                service_account_name: Some("helmq-deployer".into()),
                adopt: true,
                ..expected(
                    "web",
                    "team-a",
                    true,
                    http(
                        "http://charts.internal:8080/stable",
                        "internal",
                        "nginx",
                        "18.2.0",
                    ),
                    json!({}),
                )
            },
            probes: vec![],
        },
        Valid {
            name: "remediation and helm test",
            component: ("default", "web"),
            config: source_form(json!({
                "remediation": {
                    "install": {"retries": 1, "strategy": "uninstall"},
                    "upgrade": {"retries": 0, "strategy": "rollback"}
                },
                "test": {"enable": true, "timeout": "2m30s"}
            })),
            expected: HelmConfig {
                remediation: Remediation {
                    install: Remedy {
                        retries: 1,
                        strategy: InstallStrategy::Uninstall,
                    },
                    upgrade: Remedy {
                        retries: 0,
                        strategy: UpgradeStrategy::Rollback,
                    },
                },
                test: HelmTest {
                    enable: true,
                    timeout: Some("2m30s".into()),
                },
                ..expected(
                    "nginx",
                    "web",
                    true,
                    http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                    json!({"replicaCount": 1}),
                )
            },
            probes: vec![],
        },
        Valid {
            name: "MVP form: remediation defaults per side, nulls and blanks are absent",
            component: ("default", "web"),
            config: json!({
                "repository": {"url": BITNAMI, "name": "bitnami"},
                "chart": {"name": "nginx", "version": "18.2.4"},
                "remediation": {"upgrade": {"retries": 10}, "install": null},
                "test": {"enable": false, "timeout": " "}
            }),
            expected: HelmConfig {
                remediation: Remediation {
                    upgrade: Remedy {
                        retries: 10,
                        strategy: UpgradeStrategy::Keep,
                    },
                    ..Remediation::default()
                },
                ..expected(
                    "default-web",
                    "default",
                    false,
                    http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                    json!({}),
                )
            },
            probes: vec![],
        },
    ]
}

#[test]
fn valid_configs_normalize() {
    let cases = valid_cases();
    assert!(cases.len() >= 10);
    for case in cases {
        let (namespace, name) = case.component;
        let cfg = HelmConfig::parse(Some(&case.config), namespace, name)
            .unwrap_or_else(|e| panic!("case {}: {e}", case.name));
        assert_eq!(cfg, case.expected, "case {}", case.name);
        let values = Value::Object(cfg.values.clone());
        for (pointer, want) in &case.probes {
            assert_eq!(
                values.pointer(pointer),
                Some(want),
                "case {}: {pointer}",
                case.name
            );
        }
        assert_eq!(cfg.validate(), Ok(()), "case {}", case.name);
    }
}

#[test]
fn normalized_form_round_trips() {
    for case in valid_cases() {
        let (namespace, name) = case.component;
        let cfg = HelmConfig::parse(Some(&case.config), namespace, name)
            .unwrap_or_else(|e| panic!("case {}: {e}", case.name));
        let wire = serde_json::to_value(&cfg).expect("serialize");
        // Parsing the normalized form is the identity, whatever the component.
        let again = HelmConfig::parse(Some(&wire), "elsewhere", "other")
            .unwrap_or_else(|e| panic!("case {}: {e}", case.name));
        assert_eq!(again, cfg, "case {}", case.name);
        let decoded: HelmConfig = serde_json::from_value(wire).expect("deserialize");
        assert_eq!(decoded, cfg, "case {}", case.name);
    }
}

struct Broken {
    name: &'static str,
    config: Option<Value>,
    component: (&'static str, &'static str),
    message: String,
}

fn broken(name: &'static str, config: Value, message: impl Into<String>) -> Broken {
    Broken {
        name,
        config: Some(config),
        component: ("default", "web"),
        message: message.into(),
    }
}

/// A valid source form with `patch` merged in at the top level.
fn source_form(patch: Value) -> Value {
    let mut base = json!({
        "releaseName": "nginx",
        "releaseNamespace": "web",
        "source": {
            "type": "http",
            "repository": {"url": BITNAMI, "name": "bitnami"},
            "chart": {"name": "nginx", "version": "18.2.4"}
        },
        "values": {"replicaCount": 1}
    });
    merge(&mut base, patch);
    base
}

/// A valid OCI source form with `patch` merged into `source`.
fn oci_form(patch: Value) -> Value {
    let mut source = json!({
        "type": "oci",
        "chart": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
        "authentication": {"method": "registry", "secretRef": {"name": "creds"}}
    });
    merge(&mut source, patch);
    json!({"releaseName": "nginx", "releaseNamespace": "web", "source": source})
}

/// A valid MVP form with `patch` merged in at the top level.
fn mvp_form(patch: Value) -> Value {
    let mut base = json!({
        "repository": {"url": BITNAMI, "name": "bitnami"},
        "chart": {"name": "nginx", "version": "18.2.4"},
        "values": {"replicaCount": 1}
    });
    merge(&mut base, patch);
    base
}

/// JSON merge: objects merge recursively, a `"$delete"` string removes the key, anything
/// else replaces.
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                if value == json!("$delete") {
                    base.remove(&key);
                } else if let Some(existing) = base.get_mut(&key)
                    && existing.is_object()
                    && value.is_object()
                {
                    merge(existing, value);
                } else {
                    base.insert(key, value);
                }
            }
        }
        (base, patch) => *base = patch,
    }
}

fn broken_cases() -> Vec<Broken> {
    let big = "x".repeat(300 * 1024);
    let big_size = 300 * 1024 + r#"{"blob":""}"#.len();
    let name_rule = "must be a chart name: letters, digits, '.', '_' and '-', starting with a letter or digit, without '..', at most 128 characters; got";
    let version_rule = "must be a chart version or range: letters, digits, spaces and . + - ^ ~ < > = * | , !, starting with a letter, a digit or one of ^ ~ < > = *, at most 64 characters; got";
    vec![
        // Chart names and versions that would reach helm as a flag or a path (issue 20).
        broken(
            "chart name is a flag",
            source_form(json!({"source": {"chart": {"name": "--version"}}})),
            format!("source.chart.name {name_rule} \"--version\""),
        ),
        broken(
            "chart name is a path",
            source_form(json!({"source": {"chart": {"name": "../../../../etc/passwd"}}})),
            format!("source.chart.name {name_rule} \"../../../../etc/passwd\""),
        ),
        broken(
            "chart name too long",
            source_form(json!({"source": {"chart": {"name": "a".repeat(129)}}})),
            format!("source.chart.name {name_rule} \"{}\"", "a".repeat(64)),
        ),
        broken(
            "chart name with a slash",
            mvp_form(json!({"chart": {"name": "stable/nginx"}})),
            format!("chart.name {name_rule} \"stable/nginx\""),
        ),
        broken(
            "chart version is a flag",
            source_form(json!({"source": {"chart": {"version": "--set=a=b"}}})),
            format!("source.chart.version {version_rule} \"--set=a=b\""),
        ),
        broken(
            "chart version with a shell substitution",
            mvp_form(json!({"chart": {"version": "1.0$(id)"}})),
            format!("chart.version {version_rule} \"1.0$(id)\""),
        ),
        // Whole config.
        Broken {
            name: "config absent",
            config: None,
            component: ("default", "web"),
            message: "config is required for helm components".into(),
        },
        broken(
            "config null",
            Value::Null,
            "config is required for helm components",
        ),
        broken(
            "config is a YAML string",
            json!("releaseName: nginx\nreleaseNamespace: web\n"),
            "config must be an object, got string",
        ),
        broken(
            "config number",
            json!(42),
            "config must be an object, got number",
        ),
        broken(
            "config boolean",
            json!(true),
            "config must be an object, got boolean",
        ),
        broken(
            "config array",
            json!([]),
            "config must be an object, got array",
        ),
        broken(
            "both shapes",
            source_form(json!({"repository": {"url": BITNAMI, "name": "bitnami"}})),
            "config mixes the source form (source) with the MVP form (repository, chart): use one",
        ),
        broken(
            "source with MVP chart",
            source_form(json!({"chart": {"name": "nginx", "version": "1"}})),
            "config mixes the source form (source) with the MVP form (repository, chart): use one",
        ),
        broken(
            "empty object",
            json!({}),
            "source field is required in helm configuration",
        ),
        broken(
            "only timeouts",
            json!({"timeouts": {"install": "5m"}, "values": {}}),
            "source field is required in helm configuration",
        ),
        // Source form, top level.
        broken(
            "releaseName missing",
            source_form(json!({"releaseName": "$delete"})),
            "releaseName is required",
        ),
        broken(
            "releaseName empty",
            source_form(json!({"releaseName": ""})),
            "releaseName is required",
        ),
        broken(
            "releaseName whitespace",
            source_form(json!({"releaseName": "   "})),
            "releaseName is required",
        ),
        broken(
            "releaseName number",
            source_form(json!({"releaseName": 42})),
            "releaseName must be a string, got number",
        ),
        broken(
            "releaseName uppercase",
            source_form(json!({"releaseName": "MyNginx"})),
            "releaseName must be a lowercase DNS-1123 name of at most 53 characters, got MyNginx",
        ),
        broken(
            "releaseName underscore",
            source_form(json!({"releaseName": "my_nginx"})),
            "releaseName must be a lowercase DNS-1123 name of at most 53 characters, got my_nginx",
        ),
        broken(
            "releaseName trailing dash",
            source_form(json!({"releaseName": "nginx-"})),
            "releaseName must be a lowercase DNS-1123 name of at most 53 characters, got nginx-",
        ),
        broken(
            "releaseName 54 characters",
            source_form(json!({"releaseName": "a".repeat(54)})),
            format!(
                "releaseName must be a lowercase DNS-1123 name of at most 53 characters, got {}",
                "a".repeat(54)
            ),
        ),
        broken(
            "releaseNamespace missing",
            source_form(json!({"releaseNamespace": "$delete"})),
            "releaseNamespace is required",
        ),
        broken(
            "releaseNamespace bool",
            source_form(json!({"releaseNamespace": false})),
            "releaseNamespace must be a string, got boolean",
        ),
        broken(
            "releaseNamespace invalid",
            source_form(json!({"releaseNamespace": "Team_A"})),
            "releaseNamespace must be a DNS-1123 label of at most 63 characters, got Team_A",
        ),
        broken(
            "releaseNamespace with a dot",
            source_form(json!({"releaseNamespace": "team.a"})),
            "releaseNamespace must be a DNS-1123 label of at most 63 characters, got team.a",
        ),
        broken(
            "releaseNamespace 64 characters",
            source_form(json!({"releaseNamespace": "n".repeat(64)})),
            format!(
                "releaseNamespace must be a DNS-1123 label of at most 63 characters, got {}",
                "n".repeat(64)
            ),
        ),
        broken(
            "manageNamespace string",
            source_form(json!({"manageNamespace": "yes"})),
            "manageNamespace must be a boolean, got string",
        ),
        broken(
            "values array",
            source_form(json!({"values": [1, 2]})),
            "values must be an object, got array",
        ),
        broken(
            "values YAML string",
            source_form(json!({"values": "replicaCount: 1\n"})),
            "values must be an object, got string",
        ),
        broken(
            "values too large",
            source_form(json!({"values": {"replicaCount": "$delete", "blob": big}})),
            format!("values is too large: {big_size} bytes (limit 262144)"),
        ),
        broken(
            "source missing",
            source_form(json!({"source": "$delete"})),
            "source field is required in helm configuration",
        ),
        broken(
            "source string",
            source_form(json!({"source": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4"})),
            "source must be an object, got string",
        ),
        // Source form, http source.
        broken(
            "source.type missing",
            source_form(json!({"source": {"type": "$delete"}})),
            "source.type is required (must be 'http' or 'oci')",
        ),
        broken(
            "source.type number",
            source_form(json!({"source": {"type": 1}})),
            "source.type must be a string, got number",
        ),
        broken(
            "source.type git",
            source_form(json!({"source": {"type": "git"}})),
            "unknown source type: git (available types: http, oci)",
        ),
        broken(
            "repository missing",
            source_form(json!({"source": {"repository": "$delete"}})),
            "source.repository is required",
        ),
        broken(
            "repository string",
            source_form(json!({"source": {"repository": BITNAMI}})),
            "source.repository must be an object, got string",
        ),
        broken(
            "repository.url missing",
            source_form(json!({"source": {"repository": {"url": "$delete"}}})),
            "source.repository.url is required",
        ),
        broken(
            "repository.url not a url",
            source_form(json!({"source": {"repository": {"url": "not a url"}}})),
            "source.repository.url is not a valid URL: relative URL without a base",
        ),
        broken(
            "repository.url ftp",
            source_form(json!({"source": {"repository": {"url": "ftp://x"}}})),
            "source.repository.url must use http or https, got ftp",
        ),
        broken(
            "repository.url without host",
            source_form(json!({"source": {"repository": {"url": "https://"}}})),
            "source.repository.url is not a valid URL: empty host",
        ),
        broken(
            "repository.url oci",
            source_form(
                json!({"source": {"repository": {"url": "oci://registry-1.docker.io/bitnamicharts"}}}),
            ),
            "source.repository.url must use http or https, got oci",
        ),
        broken(
            "repository.name empty",
            source_form(json!({"source": {"repository": {"name": ""}}})),
            "source.repository.name is required",
        ),
        broken(
            "http chart missing",
            source_form(json!({"source": {"chart": "$delete"}})),
            "source.chart is required",
        ),
        broken(
            "http chart string",
            source_form(
                json!({"source": {"chart": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4"}}),
            ),
            "source.chart must be an object, got string",
        ),
        broken(
            "chart.name whitespace",
            source_form(json!({"source": {"chart": {"name": " \t"}}})),
            "source.chart.name is required",
        ),
        broken(
            "chart.version missing",
            source_form(json!({"source": {"chart": {"version": "$delete"}}})),
            "source.chart.version is required",
        ),
        broken(
            "chart.version number",
            source_form(json!({"source": {"chart": {"version": 18.2}}})),
            "source.chart.version must be a string, got number",
        ),
        // Source form, OCI source.
        broken(
            "oci chart missing",
            oci_form(json!({"chart": "$delete"})),
            "source.chart is required",
        ),
        broken(
            "oci chart object",
            oci_form(json!({"chart": {"name": "nginx", "version": "18.2.4"}})),
            "source.chart must be a string, got object",
        ),
        broken(
            "oci without prefix",
            oci_form(json!({"chart": "registry-1.docker.io/bitnamicharts/nginx:18.2.4"})),
            "source.chart must start with oci://, got registry-1.docker.io/bitnamicharts/nginx:18.2.4",
        ),
        broken(
            "oci with https prefix",
            oci_form(json!({"chart": "https://registry-1.docker.io/bitnamicharts/nginx:18.2.4"})),
            "source.chart must start with oci://, got https://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
        ),
        broken(
            "oci without tag",
            oci_form(json!({"chart": "oci://registry-1.docker.io/bitnamicharts/nginx"})),
            "source.chart must end with a version tag (oci://registry/path/chart:version)",
        ),
        broken(
            "oci port but no tag",
            oci_form(json!({"chart": "oci://localhost:5000/charts/app"})),
            "source.chart must end with a version tag (oci://registry/path/chart:version)",
        ),
        broken(
            "oci empty tag",
            oci_form(json!({"chart": "oci://localhost:5000/charts/app:"})),
            "source.chart must end with a version tag (oci://registry/path/chart:version)",
        ),
        broken(
            "oci digest",
            oci_form(
                json!({"chart": "oci://registry-1.docker.io/bitnamicharts/nginx@sha256:0123abcd"}),
            ),
            "source.chart must end with a version tag (oci://registry/path/chart:version)",
        ),
        broken(
            "oci without path",
            oci_form(json!({"chart": "oci://registry-1.docker.io"})),
            "source.chart must name a registry and a chart path (oci://registry/path/chart:version)",
        ),
        broken(
            "oci only a registry and a slash",
            oci_form(json!({"chart": "oci://localhost:5000/"})),
            "source.chart must name a registry and a chart path (oci://registry/path/chart:version)",
        ),
        broken(
            "oci without registry",
            oci_form(json!({"chart": "oci:///charts/app:1.0.0"})),
            "source.chart must name a registry and a chart path (oci://registry/path/chart:version)",
        ),
        broken(
            "oci registry that reads as a flag",
            oci_form(json!({"chart": "oci://--help/charts/app:1.0.0"})),
            "source.chart must name a registry and a chart path (oci://registry/path/chart:version)",
        ),
        broken(
            "oci authentication string",
            oci_form(json!({"authentication": "registry"})),
            "source.authentication must be an object, got string",
        ),
        broken(
            "oci auth method basic",
            oci_form(json!({"authentication": {"method": "basic"}})),
            "source.authentication.method must be 'registry', got basic",
        ),
        broken(
            "oci auth method missing",
            oci_form(json!({"authentication": {"method": "$delete"}})),
            "source.authentication.method is required",
        ),
        broken(
            "oci secretRef missing",
            oci_form(json!({"authentication": {"secretRef": "$delete"}})),
            "source.authentication.secretRef is required",
        ),
        broken(
            "oci secretRef.name empty",
            oci_form(json!({"authentication": {"secretRef": {"name": ""}}})),
            "source.authentication.secretRef.name is required",
        ),
        broken(
            "oci secretRef.namespace invalid",
            oci_form(json!({"authentication": {"secretRef": {"namespace": "Helmq"}}})),
            "source.authentication.secretRef.namespace must be a DNS-1123 label of at most 63 characters, got Helmq",
        ),
        // MVP form.
        broken(
            "MVP repository string",
            mvp_form(json!({"repository": BITNAMI})),
            "repository must be an object, got string",
        ),
        broken(
            "MVP repository missing",
            mvp_form(json!({"repository": "$delete"})),
            "repository is required",
        ),
        broken(
            "MVP repository.url missing",
            mvp_form(json!({"repository": {"url": "$delete"}})),
            "repository.url is required",
        ),
        broken(
            "MVP repository.url ftp",
            mvp_form(json!({"repository": {"url": "ftp://charts.example.com"}})),
            "repository.url must use http or https, got ftp",
        ),
        broken(
            "MVP repository.url not a url",
            mvp_form(json!({"repository": {"url": "not a url"}})),
            "repository.url is not a valid URL: relative URL without a base",
        ),
        broken(
            "MVP repository.name missing",
            mvp_form(json!({"repository": {"name": "$delete"}})),
            "repository.name is required",
        ),
        broken(
            "MVP chart missing",
            mvp_form(json!({"chart": "$delete"})),
            "chart is required",
        ),
        broken(
            "MVP chart.name empty",
            mvp_form(json!({"chart": {"name": ""}})),
            "chart.name is required",
        ),
        broken(
            "MVP chart.version missing",
            mvp_form(json!({"chart": {"version": "$delete"}})),
            "chart.version is required",
        ),
        broken(
            "MVP values array",
            mvp_form(json!({"values": ["a"]})),
            "values must be an object, got array",
        ),
        broken(
            "MVP namespace invalid",
            mvp_form(json!({"namespace": "Cache_System"})),
            "namespace must be a DNS-1123 label of at most 63 characters, got Cache_System",
        ),
        broken(
            "MVP namespace number",
            mvp_form(json!({"namespace": 7})),
            "namespace must be a string, got number",
        ),
        broken(
            "MVP manageNamespace string",
            mvp_form(json!({"manageNamespace": "true"})),
            "manageNamespace must be a boolean, got string",
        ),
        broken(
            "serviceAccountName with a colon (would name another user)",
            source_form(json!({"serviceAccountName": "x:y"})),
            "serviceAccountName must be a ServiceAccount name (a DNS-1123 subdomain of at most 253 characters), got \"x:y\"",
        ),
        broken(
            "serviceAccountName number",
            source_form(json!({"serviceAccountName": 7})),
            "serviceAccountName must be a string, got number",
        ),
        broken(
            "MVP serviceAccountName uppercase",
            mvp_form(json!({"serviceAccountName": "Deployer"})),
            "serviceAccountName must be a ServiceAccount name (a DNS-1123 subdomain of at most 253 characters), got \"Deployer\"",
        ),
        broken(
            "adopt string",
            source_form(json!({"adopt": "yes"})),
            "adopt must be a boolean, got string",
        ),
        broken(
            "remediation string",
            source_form(json!({"remediation": "rollback"})),
            "remediation must be an object, got string",
        ),
        broken(
            "remediation.upgrade array",
            source_form(json!({"remediation": {"upgrade": ["rollback"]}})),
            "remediation.upgrade must be an object, got array",
        ),
        broken(
            "remediation.install.retries too many",
            source_form(json!({"remediation": {"install": {"retries": 11}}})),
            "remediation.install.retries must be a whole number from 0 to 10, got 11",
        ),
        broken(
            "remediation.upgrade.retries negative",
            source_form(json!({"remediation": {"upgrade": {"retries": -1}}})),
            "remediation.upgrade.retries must be a whole number from 0 to 10, got -1",
        ),
        broken(
            "remediation.upgrade.retries fraction",
            source_form(json!({"remediation": {"upgrade": {"retries": 1.5}}})),
            "remediation.upgrade.retries must be a whole number from 0 to 10, got 1.5",
        ),
        broken(
            "remediation.install.retries string",
            mvp_form(json!({"remediation": {"install": {"retries": "1"}}})),
            "remediation.install.retries must be an integer, got string",
        ),
        broken(
            "remediation.install.strategy rollback (an install has nothing to roll back to)",
            source_form(json!({"remediation": {"install": {"strategy": "rollback"}}})),
            "remediation.install.strategy must be 'keep' or 'uninstall', got \"rollback\"",
        ),
        broken(
            "remediation.upgrade.strategy uninstall",
            mvp_form(json!({"remediation": {"upgrade": {"strategy": "uninstall"}}})),
            "remediation.upgrade.strategy must be 'keep' or 'rollback', got \"uninstall\"",
        ),
        broken(
            "remediation.upgrade.strategy number",
            source_form(json!({"remediation": {"upgrade": {"strategy": 1}}})),
            "remediation.upgrade.strategy must be a string, got number",
        ),
        broken(
            "test boolean",
            source_form(json!({"test": true})),
            "test must be an object, got boolean",
        ),
        broken(
            "test.enable string",
            source_form(json!({"test": {"enable": "true"}})),
            "test.enable must be a boolean, got string",
        ),
        broken(
            "test.timeout not a duration",
            source_form(json!({"test": {"enable": true, "timeout": "5 minutes"}})),
            "test.timeout must be a duration from 1s to 24h (like 30s, 5m or 1h30m), got \"5 minutes\"",
        ),
        broken(
            "test.timeout zero",
            mvp_form(json!({"test": {"enable": true, "timeout": "0s"}})),
            "test.timeout must be a duration from 1s to 24h (like 30s, 5m or 1h30m), got \"0s\"",
        ),
        broken(
            "test.timeout over a day",
            source_form(json!({"test": {"timeout": "25h"}})),
            "test.timeout must be a duration from 1s to 24h (like 30s, 5m or 1h30m), got \"25h\"",
        ),
        broken(
            "test.timeout number",
            source_form(json!({"test": {"timeout": 300}})),
            "test.timeout must be a string, got number",
        ),
        Broken {
            name: "MVP derived release name too long",
            config: Some(mvp_form(json!({}))),
            component: (
                "platform-engineering-team",
                "very-long-component-name-for-nginx",
            ),
            message: "releaseName must be a lowercase DNS-1123 name of at most 53 characters, \
                      got platform-engineering-team-very-long-component-name-for-nginx"
                .into(),
        },
    ]
}

#[test]
fn broken_configs_are_rejected_with_exact_messages() {
    let cases = broken_cases();
    assert!(cases.len() >= 20);
    for case in cases {
        let (namespace, name) = case.component;
        match HelmConfig::parse(case.config.as_ref(), namespace, name) {
            Ok(cfg) => panic!("case {}: accepted as {cfg:?}", case.name),
            Err(err) => assert_eq!(err.to_string(), case.message, "case {}", case.name),
        }
    }
}

/// Any broken source-form config that still deserializes is rejected by `validate` with the
/// message `parse` gives.
#[test]
fn validate_agrees_with_parse_on_source_form() {
    let mut checked = 0;
    for case in broken_cases() {
        let Some(config) = &case.config else { continue };
        let mvp_keys = config.get("repository").is_some() || config.get("chart").is_some();
        if mvp_keys {
            continue;
        }
        let Ok(cfg) = serde_json::from_value::<HelmConfig>(config.clone()) else {
            continue;
        };
        let (namespace, name) = case.component;
        let from_parse = HelmConfig::parse(Some(config), namespace, name);
        assert_eq!(cfg.validate(), from_parse.map(|_| ()), "case {}", case.name);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases checked");
}

#[test]
fn validate_rejects_empty_release_name() {
    let wire = json!({
        "releaseName": "",
        "releaseNamespace": "web",
        "manageNamespace": true,
        "source": {
            "type": "http",
            "repository": {"url": BITNAMI, "name": "bitnami"},
            "chart": {"name": "nginx", "version": "18.2.4"}
        },
        "values": {}
    });
    let cfg: HelmConfig = serde_json::from_value(wire.clone()).expect("deserialize");
    let err = cfg.validate().expect_err("empty releaseName");
    assert_eq!(
        err,
        ConfigError::Required {
            field: "releaseName"
        }
    );
    assert_eq!(err.to_string(), "releaseName is required");
    let parsed = HelmConfig::parse(Some(&wire), "default", "web").expect_err("rejected");
    assert_eq!(parsed.to_string(), err.to_string());
}

#[test]
fn validate_rejects_day2_fields_that_deserialize_but_break_the_rules() {
    let mut cfg = HelmConfig::parse(Some(&source_form(json!({}))), "default", "web").unwrap();
    assert!(cfg.remediation.is_default() && cfg.test.is_default());
    assert_eq!(cfg.test.timeout(), None);
    cfg.remediation.upgrade.retries = 11;
    assert_eq!(
        cfg.validate().map_err(|e| e.to_string()),
        Err("remediation.upgrade.retries must be a whole number from 0 to 10, got 11".into())
    );
    cfg.remediation.upgrade.retries = 10;
    cfg.test.timeout = Some("1h30m".into());
    assert_eq!(cfg.validate(), Ok(()));
    assert_eq!(
        cfg.test.timeout(),
        Some(std::time::Duration::from_secs(5400))
    );
    cfg.test.timeout = Some("soon".into());
    assert_eq!(
        cfg.validate().map_err(|e| e.to_string()),
        Err(
            "test.timeout must be a duration from 1s to 24h (like 30s, 5m or 1h30m), got \"soon\""
                .into()
        )
    );
    // An unknown strategy never deserializes.
    let mut wire = serde_json::to_value(&cfg).unwrap();
    wire["remediation"] = json!({"upgrade": {"strategy": "uninstall"}});
    assert!(serde_json::from_value::<HelmConfig>(wire).is_err());
}

#[test]
fn day2_defaults_are_left_out_of_the_serialized_form() {
    let parse = |patch| HelmConfig::parse(Some(&source_form(patch)), "default", "web").unwrap();
    let plain = serde_json::to_value(parse(json!({}))).unwrap();
    let explicit = parse(json!({
        "remediation": {"install": {"retries": 0, "strategy": "keep"}, "upgrade": {}},
        "test": {"enable": false}
    }));
    assert_eq!(serde_json::to_value(&explicit).unwrap(), plain);
    let wire = serde_json::to_value(parse(json!({
        "remediation": {"upgrade": {"strategy": "rollback"}},
        "test": {"enable": true}
    })))
    .unwrap();
    assert_eq!(
        wire["remediation"],
        json!({"upgrade": {"strategy": "rollback"}})
    );
    assert_eq!(wire["test"], json!({"enable": true}));
}

#[test]
fn validate_rejects_bad_oci_reference() {
    let mut cfg = HelmConfig::parse(Some(&oci_form(json!({}))), "default", "web").expect("valid");
    assert_eq!(cfg.validate(), Ok(()));
    cfg.source = oci("oci://localhost:5000/charts/app", None);
    assert_eq!(
        cfg.validate().map_err(|e| e.to_string()),
        Err(
            "source.chart must end with a version tag (oci://registry/path/chart:version)"
                .to_owned()
        )
    );
}

#[test]
fn chart_name_and_version() {
    let cases = [
        (
            http(BITNAMI, "bitnami", "nginx", "18.2.4"),
            "nginx",
            "18.2.4",
        ),
        (
            http(
                PROMETHEUS,
                "prometheus-community",
                "kube-prometheus-stack",
                "65.1.1",
            ),
            "kube-prometheus-stack",
            "65.1.1",
        ),
        (
            oci(
                "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
                None,
            ),
            "nginx",
            "18.2.4",
        ),
        (
            oci("oci://localhost:5000/charts/app:1.0.0", None),
            "app",
            "1.0.0",
        ),
        (
            oci("oci://ghcr.io/org/team/charts/api:2.3.4-rc.1", None),
            "api",
            "2.3.4-rc.1",
        ),
        // Malformed references never panic: last segment, no tag.
        (oci("oci://localhost:5000/charts/app", None), "app", ""),
        (oci("", None), "", ""),
    ];
    for (source, name, version) in cases {
        let cfg = expected("r", "ns", true, source, json!({}));
        assert_eq!(cfg.chart_name(), name, "{:?}", cfg.source);
        assert_eq!(cfg.chart_version(), version, "{:?}", cfg.source);
    }
}

#[test]
fn serialized_form_is_camel_case_and_tagged() {
    let cfg = expected(
        "app",
        "apps",
        false,
        oci(
            "oci://localhost:5000/charts/app:1.0.0",
            Some(("creds", Some("apps"))),
        ),
        json!({"a": 1}),
    );
    assert_eq!(
        serde_json::to_value(&cfg).expect("serialize"),
        json!({
            "releaseName": "app",
            "releaseNamespace": "apps",
            "manageNamespace": false,
            "source": {
                "type": "oci",
                "chart": "oci://localhost:5000/charts/app:1.0.0",
                "authentication": {
                    "method": "registry",
                    "secretRef": {"name": "creds", "namespace": "apps"}
                }
            },
            "values": {"a": 1}
        })
    );
}
