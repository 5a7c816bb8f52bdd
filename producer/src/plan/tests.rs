//! The protocol table: every phase, finalizer combination and deletion state.
//!
//! The tables plan as the watcher does: an [`Action::Issue`] is recorded in the status and the
//! Component planned again (the local [`plan`] and [`plan_unreadable`]); the tests of issuing
//! itself call [`super::plan`].

use super::*;
use helmq_schemas::component::{HandlerStatus, IssuedJob};
use helmq_tests::build::{component, nginx_config, uid};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

const OTHER: &str = "rds.deployment-orchestrator.io/lifecycle";
const COMPOSITION_LIFECYCLE: &str = "composition.deployment-orchestrator.io/lifecycle";
const UNRELATED: &str = "kubernetes.io/pvc-protection";

fn valid_config() -> serde_json::Value {
    nginx_config(serde_json::json!({"service": {"type": "ClusterIP"}, "replicaCount": 1}))
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn ago(secs: i64) -> Timestamp {
    now() - jiff::SignedDuration::from_secs(secs)
}

#[derive(Clone)]
struct Fixture {
    handler: &'static str,
    finalizers: Vec<&'static str>,
    deleting: bool,
    generation: i64,
    phase: Option<Phase>,
    observed: Option<i64>,
    config: Option<serde_json::Value>,
    record: bool,
}

fn fixture() -> Fixture {
    Fixture {
        handler: "helm",
        finalizers: vec![],
        deleting: false,
        generation: 1,
        phase: None,
        observed: None,
        config: Some(valid_config()),
        record: false,
    }
}

impl Fixture {
    fn fin(mut self, f: &[&'static str]) -> Self {
        self.finalizers = f.to_vec();
        self
    }
    fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
    fn at(mut self, phase: Phase, observed: Option<i64>) -> Self {
        self.phase = Some(phase);
        self.observed = observed;
        self
    }
    fn generation(mut self, g: i64) -> Self {
        self.generation = g;
        self
    }
    fn config(mut self, c: Option<serde_json::Value>) -> Self {
        self.config = c;
        self
    }
    fn with_record(mut self) -> Self {
        self.record = true;
        self
    }
    fn handler(mut self, h: &'static str) -> Self {
        self.handler = h;
        self
    }
    fn build(&self) -> Component {
        let mut c = component("web")
            .handler(self.handler)
            .config(self.config.clone())
            .uid(&uid("1"))
            .generation(self.generation)
            .resource_version("7")
            .finalizers(&self.finalizers);
        if self.deleting {
            c = c.deleting_since(ago(5));
        }
        if self.phase.is_some() || self.record {
            c = c.status(ComponentStatus {
                phase: self.phase,
                observed_generation: self.observed,
                handler_status: self.record.then(|| HandlerStatus {
                    release_name: Some("web-recorded".into()),
                    release_namespace: Some("apps-recorded".into()),
                    revision: Some(3),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        c.build()
    }
}

fn ctx(published: Published) -> Context<'static> {
    Context {
        handler: "helm",
        refresh: false,
        now: now(),
        published,
        resync_grace: None,
        max_timeout: Duration::from_secs(3600),
        nonce: NONCE,
    }
}

const NONCE: &str = "n0nce";

/// `component` with `job` recorded as issued, as the watcher records it.
fn with_issued(component: &Component, job: IssuedJob) -> Component {
    let mut c = component.clone();
    c.status = Some(super::issued_status(component, job, now()));
    c
}

/// [`super::plan`] as the watcher carries it out: an issued job is recorded, then planned again.
fn plan(component: &Component, ctx: &Context<'_>) -> Action {
    match super::plan(component, ctx) {
        Action::Issue(job) => super::plan(&with_issued(component, job), ctx),
        other => other,
    }
}

/// [`super::plan_unreadable`] as the watcher carries it out.
fn plan_unreadable(component: &Component, error: &str, ctx: &Context<'_>) -> Action {
    match super::plan_unreadable(component, error, ctx) {
        Action::Issue(job) => super::plan_unreadable(&with_issued(component, job), error, ctx),
        other => other,
    }
}

fn kind(action: &Action) -> &'static str {
    match action {
        Action::Ignore => "Ignore",
        Action::SkipOtherHandler { .. } => "SkipOtherHandler",
        Action::Claim => "Claim",
        Action::Suspend => "Suspend",
        Action::Issue(_) => "Issue",
        Action::PublishApply(_) => "PublishApply",
        Action::ConfigFailed { .. } => "ConfigFailed",
        Action::WaitCoordination => "WaitCoordination",
        Action::PublishDelete(_) => "PublishDelete",
        Action::FinishDeleteWithoutRelease { .. } => "FinishDeleteWithoutRelease",
        Action::DeleteBlocked { .. } => "DeleteBlocked",
        Action::Nothing(_) => "Nothing",
    }
}

const ALL_PHASES: [Option<Phase>; 8] = [
    None,
    Some(Phase::Pending),
    Some(Phase::Claimed),
    Some(Phase::Deploying),
    Some(Phase::Ready),
    Some(Phase::Failed),
    Some(Phase::Terminating),
    Some(Phase::TerminationFailed),
];

fn with_phase(f: Fixture, phase: Option<Phase>, observed: Option<i64>) -> Fixture {
    Fixture {
        phase,
        observed,
        ..f
    }
}

/// Claiming: for every phase, finalizer combination and deletion state without our
/// finalizer, the outcome depends only on the finalizers and deletion.
#[test]
fn claiming_table_over_every_phase() {
    let rows: &[(&str, &[&'static str], bool, &str)] = &[
        ("no finalizers", &[], false, "Claim"),
        (
            "coordination only",
            &[COORDINATION_FINALIZER],
            false,
            "Claim",
        ),
        (
            "composition lifecycle is not a handler",
            &[COMPOSITION_LIFECYCLE],
            false,
            "Claim",
        ),
        ("unrelated finalizer", &[UNRELATED], false, "Claim"),
        ("another handler", &[OTHER], false, "SkipOtherHandler"),
        (
            "another handler + coordination",
            &[OTHER, COORDINATION_FINALIZER],
            false,
            "SkipOtherHandler",
        ),
        ("deleting, no finalizers", &[], true, "Nothing"),
        (
            "deleting, coordination only",
            &[COORDINATION_FINALIZER],
            true,
            "Nothing",
        ),
        (
            "deleting, another handler",
            &[OTHER],
            true,
            "SkipOtherHandler",
        ),
    ];
    for (name, finalizers, deleting, want) in rows {
        for phase in ALL_PHASES {
            for observed in [None, Some(1)] {
                let mut f = with_phase(fixture().fin(finalizers), phase, observed);
                if *deleting {
                    f = f.deleting();
                }
                for config in [Some(valid_config()), None] {
                    let f = f.clone().config(config.clone());
                    let got = plan(&f.build(), &ctx(Published::default()));
                    assert_eq!(
                        kind(&got),
                        *want,
                        "{name} / {phase:?} / observed {observed:?} / config {}",
                        config.is_some()
                    );
                }
            }
        }
    }
}

#[test]
fn another_handlers_finalizer_is_named() {
    let got = plan(&fixture().fin(&[OTHER]).build(), &ctx(Published::default()));
    assert_eq!(
        got,
        Action::SkipOtherHandler {
            finalizer: OTHER.into()
        }
    );
}

#[test]
fn components_of_other_handlers_are_ignored_whatever_their_state() {
    for finalizers in [&[][..], &[HELM_FINALIZER], &[OTHER]] {
        for deleting in [false, true] {
            let mut f = fixture().handler("rds").fin(finalizers);
            if deleting {
                f = f.deleting();
            }
            assert_eq!(plan(&f.build(), &ctx(Published::default())), Action::Ignore);
        }
    }
}

/// Creation and upgrade with our finalizer (with or without the coordination finalizer, which
/// matters only for deletion).
#[test]
fn apply_table() {
    use Phase::*;
    type Row = (&'static str, Option<Phase>, i64, Option<i64>, &'static str);
    let rows: &[Row] = &[
        ("never deployed, no status", None, 1, None, "PublishApply"),
        ("pending", Some(Pending), 1, None, "PublishApply"),
        ("claimed", Some(Claimed), 1, None, "PublishApply"),
        (
            "deploying the first generation",
            Some(Deploying),
            1,
            None,
            "PublishApply",
        ),
        (
            "deploying an upgrade",
            Some(Deploying),
            2,
            Some(1),
            "PublishApply",
        ),
        ("ready and up to date", Some(Ready), 2, Some(2), "Nothing"),
        (
            "ready, spec changed",
            Some(Ready),
            3,
            Some(2),
            "PublishApply",
        ),
        (
            "failed and up to date: never retried",
            Some(Failed),
            2,
            Some(2),
            "Nothing",
        ),
        (
            "failed, spec changed",
            Some(Failed),
            3,
            Some(2),
            "PublishApply",
        ),
    ];
    for finalizers in [
        &[HELM_FINALIZER][..],
        &[HELM_FINALIZER, COORDINATION_FINALIZER],
        &[COORDINATION_FINALIZER, HELM_FINALIZER, OTHER],
    ] {
        for (name, phase, generation, observed, want) in rows {
            let f =
                with_phase(fixture().fin(finalizers), *phase, *observed).generation(*generation);
            let got = plan(&f.build(), &ctx(Published::default()));
            assert_eq!(kind(&got), *want, "{name} with {finalizers:?}");
        }
    }
}

#[test]
fn the_apply_job_names_the_component_generation_config_and_timeout() {
    let mut c = fixture().fin(&[HELM_FINALIZER]).generation(4).build();
    c.spec.deployment_timeout = Some("8m".into());
    let Action::PublishApply(job) = plan(&c, &ctx(Published::default())) else {
        panic!("expected an apply job");
    };
    assert_eq!(job.action, JobAction::Apply);
    assert_eq!(job.component.generation, 4);
    assert_eq!(job.component.uid, Some(uid("1")));
    assert_eq!(
        (
            job.component.namespace.as_str(),
            job.component.name.as_str()
        ),
        ("default", "web")
    );
    assert_eq!(job.config.release_name, "web");
    assert_eq!(job.timeout_seconds, 480);
    assert_eq!(job.id, format!("{}:4:apply:{NONCE}", uid("1")));
    assert_eq!(job.requested_at, now());
}

#[test]
fn a_published_job_is_not_republished_until_the_grace_period_passes() {
    let f = fixture().fin(&[HELM_FINALIZER]).at(Phase::Claimed, None);
    let published = |secs| Published {
        apply: Some(ago(secs)),
        ..Default::default()
    };
    // Default grace: deployment timeout (5m) + 1m.
    assert_eq!(kind(&plan(&f.build(), &ctx(published(30)))), "Nothing");
    assert_eq!(kind(&plan(&f.build(), &ctx(published(359)))), "Nothing");
    assert_eq!(
        kind(&plan(&f.build(), &ctx(published(360)))),
        "PublishApply"
    );
    // Configured grace.
    let mut short = ctx(published(3));
    short.resync_grace = Some(Duration::from_secs(2));
    assert_eq!(kind(&plan(&f.build(), &short)), "PublishApply");
}

#[test]
fn a_worker_visibly_progressing_on_this_generation_counts_as_activity() {
    let progressing = |generation, secs| {
        let mut c = fixture()
            .fin(&[HELM_FINALIZER])
            .at(Phase::Deploying, None)
            .generation(2)
            .build();
        c.status.as_mut().unwrap().conditions.push(Condition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: "Deploying".into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: Time(ago(secs)),
        });
        plan(&c, &ctx(Published::default()))
    };
    assert_eq!(kind(&progressing(2, 30)), "Nothing");
    assert_eq!(kind(&progressing(2, 3600)), "PublishApply");
    assert_eq!(kind(&progressing(1, 30)), "PublishApply");
}

#[test]
fn invalid_config_is_claimed_then_failed_once_per_generation() {
    // Unclaimed: claimed first, whatever the config.
    assert_eq!(
        plan(&fixture().config(None).build(), &ctx(Published::default())),
        Action::Claim
    );
    let claimed = fixture()
        .fin(&[HELM_FINALIZER])
        .config(None)
        .at(Phase::Claimed, None);
    assert_eq!(
        plan(&claimed.build(), &ctx(Published::default())),
        Action::ConfigFailed {
            message: "config is required for helm components".into()
        }
    );
    let failed_once = Published {
        failed: true,
        ..Default::default()
    };
    assert_eq!(kind(&plan(&claimed.build(), &ctx(failed_once))), "Nothing");
    // The writer recorded Failed for this generation: nothing until the spec changes.
    let failed = claimed.clone().at(Phase::Failed, Some(1));
    assert_eq!(
        kind(&plan(&failed.build(), &ctx(Published::default()))),
        "Nothing"
    );
    // A spec change to another invalid config fails the new generation.
    let edited = failed
        .generation(2)
        .config(Some(serde_json::json!({"repository": {"name": "bitnami"}})));
    assert_eq!(
        plan(&edited.build(), &ctx(Published::default())),
        Action::ConfigFailed {
            message: "repository.url is required".into()
        }
    );
    // A spec change to a valid config deploys.
    let fixed = claimed
        .at(Phase::Failed, Some(1))
        .generation(2)
        .config(Some(valid_config()));
    assert_eq!(
        kind(&plan(&fixed.build(), &ctx(Published::default()))),
        "PublishApply"
    );
}

#[test]
fn a_string_config_fails_with_the_parsers_message() {
    let f = fixture()
        .fin(&[HELM_FINALIZER])
        .config(Some(serde_json::json!("repository: x")));
    let Action::ConfigFailed { message } = plan(&f.build(), &ctx(Published::default())) else {
        panic!("expected a config failure");
    };
    let parser = HelmConfig::parse(Some(&serde_json::json!("repository: x")), "default", "web")
        .unwrap_err()
        .to_string();
    assert_eq!(message, parser);
}

/// Deletion with our finalizer, over every phase.
#[test]
fn deletion_table_over_every_phase() {
    for phase in ALL_PHASES {
        let waiting = with_phase(
            fixture().fin(&[HELM_FINALIZER, COORDINATION_FINALIZER]),
            phase,
            Some(1),
        )
        .deleting();
        assert_eq!(
            plan(&waiting.build(), &ctx(Published::default())),
            Action::WaitCoordination,
            "{phase:?}"
        );
        let waiting_bad_config = waiting.clone().config(None);
        assert_eq!(
            plan(&waiting_bad_config.build(), &ctx(Published::default())),
            Action::WaitCoordination,
            "{phase:?}"
        );

        let ready_to_go = with_phase(fixture().fin(&[HELM_FINALIZER]), phase, None).deleting();
        let want = "PublishDelete";
        assert_eq!(
            kind(&plan(&ready_to_go.build(), &ctx(Published::default()))),
            want,
            "{phase:?}"
        );
        // Composition's lifecycle finalizer does not hold deletion; only coordination does.
        let composition = with_phase(
            fixture().fin(&[HELM_FINALIZER, COMPOSITION_LIFECYCLE]),
            phase,
            None,
        )
        .deleting();
        assert_eq!(
            kind(&plan(&composition.build(), &ctx(Published::default()))),
            want,
            "{phase:?}"
        );
    }
}

#[test]
fn termination_failed_keeps_waiting_until_the_spec_changes() {
    let failed = fixture()
        .fin(&[HELM_FINALIZER])
        .at(Phase::TerminationFailed, Some(1))
        .deleting();
    assert_eq!(
        kind(&plan(&failed.build(), &ctx(Published::default()))),
        "Nothing"
    );
    let edited = failed.generation(2);
    assert_eq!(
        kind(&plan(&edited.build(), &ctx(Published::default()))),
        "PublishDelete"
    );
}

#[test]
fn one_delete_job_until_the_grace_period_passes() {
    let f = fixture()
        .fin(&[HELM_FINALIZER])
        .at(Phase::Terminating, Some(1))
        .deleting();
    let published = |secs| Published {
        delete: Some(ago(secs)),
        ..Default::default()
    };
    assert_eq!(kind(&plan(&f.build(), &ctx(published(10)))), "Nothing");
    assert_eq!(
        kind(&plan(&f.build(), &ctx(published(361)))),
        "PublishDelete"
    );
}

#[test]
fn the_delete_job_targets_the_recorded_release() {
    let f = fixture()
        .fin(&[HELM_FINALIZER])
        .at(Phase::Ready, Some(1))
        .with_record()
        .deleting();
    let Action::PublishDelete(job) = plan(&f.build(), &ctx(Published::default())) else {
        panic!("expected a delete job");
    };
    assert_eq!(job.action, JobAction::Delete);
    assert_eq!(job.config.release_name, "web-recorded");
    assert_eq!(job.config.release_namespace, "apps-recorded");
    assert_eq!(job.id, format!("{}:1:delete:{NONCE}", uid("1")));
    assert_eq!(job.timeout_seconds, 300);
    // Without a record, the config's release.
    let f = fixture().fin(&[HELM_FINALIZER]).deleting();
    let Action::PublishDelete(job) = plan(&f.build(), &ctx(Published::default())) else {
        panic!("expected a delete job");
    };
    assert_eq!(job.config.release_name, "web");
}

#[test]
fn deleting_with_an_invalid_config() {
    // Nothing was ever installed: finish at once.
    let never = fixture()
        .fin(&[HELM_FINALIZER])
        .config(None)
        .at(Phase::Failed, Some(1))
        .deleting();
    assert_eq!(
        plan(&never.build(), &ctx(Published::default())),
        Action::FinishDeleteWithoutRelease {
            message: "nothing to uninstall (no release was installed: config is required for helm components)".into()
        }
    );
    let terminated = Published {
        terminated: true,
        ..Default::default()
    };
    assert_eq!(kind(&plan(&never.build(), &ctx(terminated))), "Nothing");
    // A release is recorded: it cannot be uninstalled without a config; say so, keep it.
    let installed = never.with_record();
    let Action::DeleteBlocked { message } = plan(&installed.build(), &ctx(Published::default()))
    else {
        panic!("expected a blocked deletion");
    };
    assert_eq!(
        message,
        "cannot uninstall release apps-recorded/web-recorded: config is required for helm components; fix spec.config to retry"
    );
    let reported = Published {
        termination_failed: true,
        ..Default::default()
    };
    assert_eq!(kind(&plan(&installed.build(), &ctx(reported))), "Nothing");
}

#[test]
fn an_unreadable_object_is_planned_like_an_invalid_config_with_the_reason() {
    const ERROR: &str = "recursion limit exceeded at line 1 column 900";
    let message = unreadable_message(ERROR);
    let failed_once = Published {
        failed: true,
        ..Default::default()
    };
    let terminated = Published {
        terminated: true,
        ..Default::default()
    };
    let claimed = fixture().fin(&[HELM_FINALIZER]).at(Phase::Claimed, None);
    let cases: Vec<(&str, Fixture, Published, Action)> = vec![
        ("unclaimed", fixture(), Published::default(), Action::Claim),
        (
            "another handler's",
            fixture().handler("other"),
            Published::default(),
            Action::Ignore,
        ),
        (
            "claimed",
            claimed.clone(),
            Published::default(),
            Action::ConfigFailed {
                message: message.clone(),
            },
        ),
        (
            "failure published",
            claimed.clone(),
            failed_once,
            Action::Nothing("config failure published; waiting for the writer"),
        ),
        (
            "failed at this generation",
            claimed.clone().at(Phase::Failed, Some(1)),
            Published::default(),
            Action::Nothing("failed at this generation; waiting for a spec change"),
        ),
        (
            "deleted, nothing installed",
            claimed.clone().deleting(),
            Published::default(),
            Action::FinishDeleteWithoutRelease {
                message: format!("nothing to uninstall (no release was installed: {message})"),
            },
        ),
        (
            "deleted, terminated published",
            claimed.clone().deleting(),
            terminated,
            Action::Nothing("terminated; waiting for the writer to remove the finalizer"),
        ),
        (
            "deleted with a release recorded",
            claimed.clone().with_record().deleting(),
            Published::default(),
            Action::DeleteBlocked {
                message: format!(
                    "cannot uninstall release apps-recorded/web-recorded: {message}; fix spec.config to retry"
                ),
            },
        ),
    ];
    for (name, fixture, published, want) in cases {
        // A valid config in the skeleton changes nothing: the object as a whole is unreadable.
        let got = plan_unreadable(&fixture.build(), ERROR, &ctx(published));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn timeouts_over_the_max_are_refused() {
    let hour = Duration::from_secs(3600);
    let cases = [
        ("1s", Duration::from_secs(1), Ok(Duration::from_secs(1))),
        ("the max", hour, Ok(hour)),
        (
            "one second over",
            hour + Duration::from_secs(1),
            Err(
                "spec.deploymentTimeout is 3601s, over the limit of 3600s (--max-timeout); use a shorter timeout",
            ),
        ),
        (
            "87600h",
            Duration::from_secs(87_600 * 3600),
            Err(
                "spec.deploymentTimeout is 315360000s, over the limit of 3600s (--max-timeout); use a shorter timeout",
            ),
        ),
    ];
    for (name, timeout, want) in cases {
        assert_eq!(
            capped_timeout("spec.deploymentTimeout", timeout, hour),
            want.map_err(str::to_owned),
            "{name}"
        );
    }
}

#[test]
fn a_component_asking_for_too_long_a_timeout_fails_like_an_invalid_config() {
    let claimed = fixture().fin(&[HELM_FINALIZER]).at(Phase::Claimed, None);
    let mut long = claimed.build();
    long.spec.deployment_timeout = Some("87600h".into());
    assert_eq!(
        plan(&long, &ctx(Published::default())),
        Action::ConfigFailed {
            message: "spec.deploymentTimeout is 315360000s, over the limit of 3600s (--max-timeout); use a shorter timeout".into()
        }
    );
    // Within a larger --max-timeout it deploys.
    let mut roomy = ctx(Published::default());
    roomy.max_timeout = Duration::from_secs(87_600 * 3600);
    assert_eq!(kind(&plan(&long, &roomy)), "PublishApply");
    // Being deleted with a release recorded: the delete job cannot be built either.
    let mut deleting = claimed.with_record().deleting().build();
    deleting.spec.termination_timeout = Some("25h".into());
    assert_eq!(
        plan(&deleting, &ctx(Published::default())),
        Action::DeleteBlocked {
            message: "cannot uninstall release apps-recorded/web-recorded: spec.terminationTimeout is 90000s, over the limit of 3600s (--max-timeout); use a shorter timeout; fix spec.config to retry".into()
        }
    );
}

#[test]
fn a_job_may_adopt_only_the_release_its_components_status_records() {
    let recorded = |release: &str, namespace: &str| {
        let mut c = fixture()
            .fin(&[HELM_FINALIZER])
            .at(Phase::Ready, Some(1))
            .generation(2)
            .build();
        c.status.as_mut().expect("status").handler_status = Some(HandlerStatus {
            release_name: Some(release.into()),
            release_namespace: Some(namespace.into()),
            ..Default::default()
        });
        c
    };
    let apply_adopts = |c: &Component| match plan(c, &ctx(Published::default())) {
        Action::PublishApply(job) => job.config.adopt,
        other => panic!("expected an apply job, got {}", kind(&other)),
    };
    // Deployed by this Component before helmq labelled releases: taken over, not stranded.
    assert!(apply_adopts(&recorded("web", "apps")));
    // Another release, or nothing recorded: only what spec.config says (here: no).
    assert!(!apply_adopts(&recorded("web", "other")));
    assert!(!apply_adopts(&recorded("db", "apps")));
    let fresh = fixture().fin(&[HELM_FINALIZER]).build();
    assert!(!apply_adopts(&fresh));
    // The delete of a recorded release may uninstall it; without a record it may not adopt.
    let deleting = fixture()
        .fin(&[HELM_FINALIZER])
        .at(Phase::Ready, Some(1))
        .with_record()
        .deleting();
    let Action::PublishDelete(job) = plan(&deleting.build(), &ctx(Published::default())) else {
        panic!("expected a delete job");
    };
    assert!(job.config.adopt);
    let unrecorded = fixture()
        .fin(&[HELM_FINALIZER])
        .at(Phase::Ready, Some(1))
        .deleting();
    let Action::PublishDelete(job) = plan(&unrecorded.build(), &ctx(Published::default())) else {
        panic!("expected a delete job");
    };
    assert!(!job.config.adopt);
}

#[test]
fn a_job_is_issued_before_anything_is_published_for_it() {
    let claimed = fixture().fin(&[HELM_FINALIZER]).at(Phase::Claimed, None);
    let apply = |g: i64| IssuedJob {
        id: format!("{}:{g}:apply:{NONCE}", uid("1")),
        generation: g,
        action: JobAction::Apply,
        refresh: 0,
        forced: false,
        drift_check: false,
    };
    let delete = |g: i64| IssuedJob {
        id: format!("{}:{g}:delete:{NONCE}", uid("1")),
        generation: g,
        action: JobAction::Delete,
        refresh: 0,
        forced: false,
        drift_check: false,
    };
    let cases: Vec<(&str, Component, Action)> = vec![
        (
            "apply: nothing recorded",
            claimed.build(),
            Action::Issue(apply(1)),
        ),
        (
            "invalid config: the Failed event answers an issued apply job",
            claimed.clone().config(None).build(),
            Action::Issue(apply(1)),
        ),
        (
            "a new generation: the job of the last one does not count",
            with_issued(&claimed.clone().generation(2).build(), apply(1)),
            Action::Issue(apply(2)),
        ),
        (
            "delete: the apply job of the generation does not count",
            with_issued(&claimed.clone().deleting().build(), apply(1)),
            Action::Issue(delete(1)),
        ),
        (
            "delete with nothing installed: Terminated answers an issued delete job",
            claimed.clone().config(None).deleting().build(),
            Action::Issue(delete(1)),
        ),
        (
            "delete blocked: TerminationFailed answers an issued delete job",
            claimed
                .clone()
                .config(None)
                .with_record()
                .deleting()
                .build(),
            Action::Issue(delete(1)),
        ),
    ];
    for (name, component, want) in cases {
        assert_eq!(
            super::plan(&component, &ctx(Published::default())),
            want,
            "{name}"
        );
    }
    // Nothing to publish, nothing issued.
    let ready = claimed.at(Phase::Ready, Some(1)).build();
    assert_eq!(
        kind(&super::plan(&ready, &ctx(Published::default()))),
        "Nothing"
    );
}

#[test]
fn the_recorded_job_id_is_reused_by_retries_and_by_a_producer_taking_over() {
    let recorded = IssuedJob {
        id: format!("{}:3:apply:first-producers-nonce", uid("1")),
        generation: 3,
        action: JobAction::Apply,
        refresh: 0,
        forced: false,
        drift_check: false,
    };
    let c = with_issued(
        &fixture()
            .fin(&[HELM_FINALIZER])
            .at(Phase::Deploying, None)
            .generation(3)
            .build(),
        recorded.clone(),
    );
    // The same producer after the grace period, and another one that never published: each
    // draws another nonce, neither uses it.
    let late = Published {
        apply: Some(ago(3600)),
        ..Default::default()
    };
    for (name, published, nonce) in [
        ("retry after the grace period", late, "second-nonce"),
        ("a new leader", Published::default(), "third-nonce"),
    ] {
        let mut ctx = ctx(published);
        ctx.nonce = nonce;
        let Action::PublishApply(job) = super::plan(&c, &ctx) else {
            panic!("{name}: expected an apply job");
        };
        assert_eq!(job.id, recorded.id, "{name}");
        assert_eq!(job.dedupe_id(), recorded.id, "{name}: the Nats-Msg-Id");
    }
    // Deleting: the delete job recorded is reused the same way.
    let deleting = fixture()
        .fin(&[HELM_FINALIZER])
        .deleting()
        .generation(3)
        .build();
    let Action::Issue(issued) = super::plan(&deleting, &ctx(Published::default())) else {
        panic!("expected a delete job to issue");
    };
    let mut other = ctx(Published::default());
    other.nonce = "another";
    let Action::PublishDelete(job) = super::plan(&with_issued(&deleting, issued.clone()), &other)
    else {
        panic!("expected a delete job");
    };
    assert_eq!(job.id, issued.id);
    assert_eq!(job.id, format!("{}:3:delete:{NONCE}", uid("1")));
}

/// `component` with annotation `key` set to `value` (removed when `None`).
fn annotated(component: &Component, key: &str, value: Option<&str>) -> Component {
    let mut c = component.clone();
    let annotations = c.metadata.annotations.get_or_insert_with(Default::default);
    match value {
        Some(value) => annotations.insert(key.to_owned(), value.to_owned()),
        None => annotations.remove(key),
    };
    c
}

/// Records in `c`'s status the digests of what is deployed (`sha256:v`, `sha256:c`), as the
/// writer does on `Ready`; the record, for more.
fn record_digests(c: &mut Component) -> &mut HandlerStatus {
    let record = c.status.get_or_insert_with(Default::default);
    let record = record.handler_status.get_or_insert_with(Default::default);
    record.values_digest = Some("sha256:v".into());
    record.config_digest = Some("sha256:c".into());
    record
}

/// A claimed Component whose apply job of generation 1 (refresh 0) ended `Ready`, as the writer
/// leaves it.
fn ready_at_generation_1() -> Component {
    let claimed = fixture().fin(&[HELM_FINALIZER]).at(Phase::Claimed, None);
    let issued = new_issued_job(&claimed.build(), JobAction::Apply, NONCE);
    let mut c = with_issued(&claimed.build(), issued);
    answered(&mut c, Phase::Ready);
    c
}

/// What the writer does with the outcome of the apply job recorded as issued.
fn answered(c: &mut Component, phase: Phase) {
    let generation = c.metadata.generation;
    let status = c.status.get_or_insert_with(Default::default);
    status.phase = Some(phase);
    status.observed_generation = generation;
    let record = status.handler_status.get_or_insert_with(Default::default);
    record.observed_refresh = record.issued_job.as_ref().map(|j| j.refresh);
}

fn suspended_condition(c: &Component) -> Option<&Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == SUSPENDED_CONDITION)
}

/// Plans `c` as the watcher does, carrying out `Suspend` and `Issue` until another action.
fn settle(mut c: Component) -> (Component, Action) {
    for _ in 0..4 {
        match super::plan(&c, &ctx(Published::default())) {
            Action::Suspend => c.status = Some(suspended_status(&c, true, now())),
            Action::Issue(job) => c = with_issued(&c, job),
            other => return (c, other),
        }
    }
    panic!("no settled action for {c:?}");
}

fn handled_request(c: &Component) -> Option<&str> {
    let record = c.status.as_ref()?.handler_status.as_ref()?;
    record.last_handled_reconcile_at.as_deref()
}

fn published_refresh(action: &Action) -> Option<(i64, u32)> {
    match action {
        Action::PublishApply(job) => Some((job.component.generation, job.refresh)),
        _ => None,
    }
}

#[test]
fn a_suspended_component_gets_no_job_until_resumed_and_deletion_still_uninstalls() {
    let ready = ready_at_generation_1();
    assert_eq!(
        settle(ready.clone()).1,
        Action::Nothing("status reflects this generation")
    );

    let suspended = annotated(&ready, SUSPEND_ANNOTATION, Some("true"));
    assert_eq!(
        super::plan(&suspended, &ctx(Published::default())),
        Action::Suspend
    );
    let (suspended, action) = settle(suspended);
    assert_eq!(action, Action::Nothing("suspended"));
    let condition = suspended_condition(&suspended).unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "Suspended")
    );

    // A spec change while suspended is not applied; only "true" suspends.
    let mut changed = suspended.clone();
    changed.metadata.generation = Some(2);
    assert_eq!(settle(changed.clone()).1, Action::Nothing("suspended"));
    let other_value = annotated(&changed, SUSPEND_ANNOTATION, Some("false"));
    assert_eq!(published_refresh(&settle(other_value).1), Some((2, 0)));

    // Resumed after the spec change: the new generation's job, and the condition turns False.
    let (resumed, action) = settle(annotated(&changed, SUSPEND_ANNOTATION, None));
    assert_eq!(published_refresh(&action), Some((2, 0)));
    let condition = suspended_condition(&resumed).unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "Resumed")
    );

    // Resumed without a spec change: the same generation is applied again.
    let (_, action) = settle(annotated(&suspended, SUSPEND_ANNOTATION, None));
    assert_eq!(published_refresh(&action), Some((1, 1)));

    // Deleting a suspended Component uninstalls its release.
    let mut deleting = suspended.clone();
    deleting.metadata.deletion_timestamp = Some(Time(ago(5)));
    assert!(matches!(settle(deleting).1, Action::PublishDelete(_)));

    // A suspended Component never claimed is marked, not claimed.
    let unclaimed = annotated(&fixture().build(), SUSPEND_ANNOTATION, Some("true"));
    assert_eq!(
        super::plan(&unclaimed, &ctx(Published::default())),
        Action::Suspend
    );
}

#[test]
fn each_new_reconcile_request_re_applies_the_generation_once() {
    let ready = ready_at_generation_1();
    let requested = annotated(
        &ready,
        REQUESTED_AT_ANNOTATION,
        Some("2026-12-07T10:00:00Z"),
    );
    let (mut handled, action) = settle(requested.clone());
    let Action::PublishApply(job) = &action else {
        panic!("{action:?}");
    };
    assert_eq!((job.component.generation, job.refresh), (1, 1));
    let issued = recorded_job(&handled, JobAction::Apply).unwrap();
    assert_eq!(
        (issued.refresh, &issued.id),
        (1, &job.id),
        "published as issued"
    );
    assert_eq!(handled_request(&handled), Some("2026-12-07T10:00:00Z"));

    // Until its outcome, the refresh is published again by resync, never issued twice.
    assert_eq!(published_refresh(&settle(handled.clone()).1), Some((1, 1)));
    answered(&mut handled, Phase::Ready);
    assert_eq!(
        settle(handled.clone()).1,
        Action::Nothing("status reflects this generation")
    );

    // A failed refresh is not retried by the plan either; a new request is.
    answered(&mut handled, Phase::Failed);
    assert_eq!(
        settle(handled.clone()).1,
        Action::Nothing("status reflects this generation")
    );
    let again = annotated(
        &handled,
        REQUESTED_AT_ANNOTATION,
        Some("2026-12-07T11:00:00Z"),
    );
    assert_eq!(published_refresh(&settle(again).1), Some((1, 2)));

    // A request that comes with a spec change is handled by the new generation's job.
    let mut changed = requested;
    changed.metadata.generation = Some(2);
    let (changed, action) = settle(changed);
    assert_eq!(published_refresh(&action), Some((2, 0)));
    assert_eq!(handled_request(&changed), Some("2026-12-07T10:00:00Z"));
}

#[test]
fn a_changed_values_source_re_applies_once_the_outcome_is_in() {
    let ready = ready_at_generation_1();
    let refresh = Context {
        refresh: true,
        ..ctx(Published::default())
    };
    let Action::Issue(job) = super::plan(&ready, &refresh) else {
        panic!("a refresh is issued");
    };
    assert_eq!((job.refresh, job.forced), (1, false));
    // The job carries what is deployed, so the worker can skip Helm when nothing changed.
    let mut deployed = ready.clone();
    record_digests(&mut deployed);
    let Action::Issue(job) = super::plan(&deployed, &refresh) else {
        panic!("a refresh is issued");
    };
    let Action::PublishApply(published) = super::plan(&with_issued(&deployed, job), &refresh)
    else {
        panic!("the refresh is published");
    };
    let carried = published.deployed.expect("digests carried");
    assert_eq!(
        (
            carried.values_digest.as_str(),
            carried.config_digest.as_str()
        ),
        ("sha256:v", "sha256:c")
    );
    // A reconcile request is forced: Helm runs even when nothing changed.
    let requested = annotated(&deployed, REQUESTED_AT_ANNOTATION, Some("t"));
    let (_, action) = settle(requested);
    let Action::PublishApply(forced) = action else {
        panic!("{action:?}");
    };
    assert_eq!(forced.deployed, None);
    // While a job is in flight the request waits (the watcher keeps it).
    let mut deploying = deployed;
    deploying.status.as_mut().unwrap().phase = Some(Phase::Deploying);
    deploying.metadata.generation = Some(2);
    assert!(matches!(
        super::plan(&deploying, &refresh),
        Action::Issue(IssuedJob { refresh: 0, .. })
    ));
}

/// [`ready_at_generation_1`] with `config.drift` (`mode`, a 60 s interval), deployed `deployed`
/// seconds before [`now`].
fn ready_with_drift(mode: &str, deployed: i64) -> Component {
    let mut c = ready_at_generation_1();
    let mut config = valid_config();
    config["drift"] = serde_json::json!({"mode": mode, "interval": "60s"});
    c.spec.config = Some(config);
    let record = record_digests(&mut c);
    record.last_deploy_time = Some(Time(ago(deployed)));
    c
}

#[test]
fn a_drift_check_is_issued_an_interval_after_the_last_check_or_deploy() {
    // Not yet due: nothing; its time is an interval after the deploy.
    let fresh = ready_with_drift("warn", 30);
    assert_eq!(
        next_drift_check(&fresh),
        Some(ago(30) + jiff::SignedDuration::from_secs(60))
    );
    assert_eq!(
        settle(fresh).1,
        Action::Nothing("status reflects this generation")
    );
    // Due: a re-apply of the generation, marked as a check, carrying what is deployed.
    let due = ready_with_drift("correct", 61);
    let (checking, action) = settle(due);
    let Action::PublishApply(job) = action else {
        panic!("{action:?}");
    };
    assert!(job.drift_check);
    assert_eq!((job.component.generation, job.refresh), (1, 1));
    assert!(
        job.deployed.is_some(),
        "the worker checks only what is deployed as asked"
    );
    // While the check is out, no other check: its time comes from its answer.
    assert_eq!(next_drift_check(&checking), None);
    assert_eq!(published_refresh(&settle(checking.clone()).1), Some((1, 1)));
    let mut checked = checking;
    answered(&mut checked, Phase::Ready);
    let record = checked
        .status
        .as_mut()
        .unwrap()
        .handler_status
        .as_mut()
        .unwrap();
    record.drift_checked_at = Some(Time(ago(10)));
    assert_eq!(
        next_drift_check(&checked),
        Some(ago(10) + jiff::SignedDuration::from_secs(60))
    );
    assert_eq!(
        settle(checked).1,
        Action::Nothing("status reflects this generation")
    );
}

#[test]
fn no_drift_check_when_disabled_failed_deleting_or_at_an_older_generation() {
    assert_eq!(next_drift_check(&ready_with_drift("disabled", 600)), None);
    assert_eq!(
        next_drift_check(&ready_at_generation_1()),
        None,
        "no drift block"
    );
    let mut failed = ready_with_drift("warn", 600);
    failed.status.as_mut().unwrap().phase = Some(Phase::Failed);
    assert_eq!(next_drift_check(&failed), None);
    let mut changed = ready_with_drift("warn", 600);
    changed.metadata.generation = Some(2);
    assert_eq!(
        next_drift_check(&changed),
        None,
        "the new generation deploys first"
    );
    let mut deleting = ready_with_drift("warn", 600);
    deleting.metadata.deletion_timestamp = Some(Time(ago(1)));
    assert_eq!(next_drift_check(&deleting), None);
    // A suspended Component gets no check.
    let suspended = annotated(
        &ready_with_drift("warn", 600),
        SUSPEND_ANNOTATION,
        Some("true"),
    );
    assert_eq!(next_drift_check(&suspended), None);
    // A reconcile request due at the same time is forced: Helm runs, whatever the check says.
    let requested = annotated(
        &ready_with_drift("warn", 600),
        REQUESTED_AT_ANNOTATION,
        Some("t"),
    );
    let Action::PublishApply(job) = settle(requested).1 else {
        panic!("a job");
    };
    assert_eq!(job.deployed, None);
}
