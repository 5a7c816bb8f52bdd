//! `config.remediation` as pure functions: what a failed install or upgrade left behind, judged
//! from `helm history` read after the failure ([`judge_failure`]), and what is done about it
//! ([`remedy`]): nothing (remediation not asked for, the failure stands as before), try again
//! within the same run, or the strategy: keep, uninstall, or roll back to the last deployed
//! revision.
//!
//! Only a failure after which Helm wrote a revision is remediated: a wait timeout, a failed
//! hook, a failed `helm test`. One before that (the chart not found, a rendering error, RBAC
//! refusing the release record, another operation in progress) leaves no new revision, and the
//! worker handles it as it always has.

use helmq_schemas::config::{InstallStrategy, Remediation, UpgradeStrategy};
use jiff::Timestamp;

use crate::driver::{Deploy, HelmStatus, Revision};

/// A deploy that failed after Helm wrote its revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedDeploy {
    /// The revision the failed try wrote (`failed`, or `deployed` when its tests failed).
    pub revision: i64,
    /// The newest revision deployed before it; `None` when there was none: an install.
    pub last_deployed: Option<i64>,
}

impl FailedDeploy {
    /// An install (nothing was deployed before) or an upgrade.
    pub fn deploy(&self) -> Deploy {
        match self.last_deployed {
            None => Deploy::Install,
            Some(_) => Deploy::Upgrade,
        }
    }
}

/// What failed in one try of a run that started at `since`: its apply (`tested` is `None`),
/// or the tests of the revision `tested` it deployed. From the release's `history` read after
/// the failure; `None` when the try left no revision of its own (Helm failed before it wrote
/// one, or the newest record is older than the run, pending, or of an unknown time). What it
/// goes back to is the newest revision deployed before the run (a record of an unknown time
/// counts as older).
pub fn judge_failure(
    history: &[Revision],
    tested: Option<i64>,
    since: Timestamp,
) -> Option<FailedDeploy> {
    let revision = match tested {
        Some(revision) => revision,
        None => {
            let newest = history.iter().max_by_key(|r| r.revision)?;
            // Helm stamps a record with the time its action started, on the worker's clock
            // (helm runs beside it): a failed record from before the run is someone else's.
            let ours = newest.updated.is_some_and(|at| at >= since);
            if newest.status != HelmStatus::Failed || !ours {
                return None;
            }
            newest.revision
        }
    };
    // Deployed before the run: an earlier try of this run may have deployed a revision whose
    // tests then failed, which is no revision to go back to.
    let last_deployed = history
        .iter()
        .filter(|r| r.revision < revision && r.updated.is_none_or(|at| at < since))
        .filter(|r| matches!(r.status, HelmStatus::Deployed | HelmStatus::Superseded))
        .map(|r| r.revision)
        .max();
    Some(FailedDeploy {
        revision,
        last_deployed,
    })
}

/// What is done after the last try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The release stays as Helm left it.
    Keep,
    /// `helm uninstall`.
    Uninstall,
    /// `helm rollback` to this revision.
    Rollback(i64),
}

/// What to do about a failed deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// `config.remediation` says nothing for this kind of deploy: the failure stands as it is,
    /// and the worker's retry policy decides as without remediation.
    Untouched,
    /// Try the deploy again in the same run.
    Retry,
    /// The tries are spent: do this, and the job ends failed.
    Then(Strategy),
}

/// What `remediation` says to do after `failed` ended try number `tries` (1 for the first).
pub fn remedy(remediation: &Remediation, failed: FailedDeploy, tries: u32) -> Remedy {
    let (retries, strategy, untouched) = match failed.last_deployed {
        None => (
            remediation.install.retries,
            match remediation.install.strategy {
                InstallStrategy::Keep => Strategy::Keep,
                InstallStrategy::Uninstall => Strategy::Uninstall,
            },
            remediation.install.is_default(),
        ),
        Some(last_deployed) => (
            remediation.upgrade.retries,
            match remediation.upgrade.strategy {
                UpgradeStrategy::Keep => Strategy::Keep,
                UpgradeStrategy::Rollback => Strategy::Rollback(last_deployed),
            },
            remediation.upgrade.is_default(),
        ),
    };
    if untouched {
        Remedy::Untouched
    } else if tries <= retries {
        Remedy::Retry
    } else {
        Remedy::Then(strategy)
    }
}

#[cfg(test)]
mod tests {
    use helmq_schemas::config::Remedy as Side;

    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn rev(revision: i64, status: &str, updated: &str) -> Revision {
        Revision {
            revision,
            status: status.into(),
            chart: "web-1.0.0".into(),
            description: String::new(),
            updated: Some(at(updated)),
            lease_revision: None,
        }
    }

    const BEFORE: &str = "2026-11-30T09:00:00Z";
    const DURING: &str = "2026-11-30T10:00:01.5Z";

    #[test]
    fn what_failed_is_read_from_the_history_after_the_failure() {
        let since = at("2026-11-30T10:00:00Z");
        let failed = |revision, last_deployed| {
            Some(FailedDeploy {
                revision,
                last_deployed,
            })
        };
        let unknown_time = Revision {
            updated: None,
            ..rev(3, "failed", DURING)
        };
        // (what happened, history after it, tested revision, judgement)
        let cases = [
            (
                "an upgrade timed out",
                vec![
                    rev(1, "superseded", BEFORE),
                    rev(2, "deployed", BEFORE),
                    rev(3, "failed", DURING),
                ],
                None,
                failed(3, Some(2)),
            ),
            (
                "an install timed out",
                vec![rev(1, "failed", DURING)],
                None,
                failed(1, None),
            ),
            (
                "an upgrade over a failed install: still nothing deployed",
                vec![rev(1, "failed", BEFORE), rev(2, "failed", DURING)],
                None,
                failed(2, None),
            ),
            (
                "after an earlier rollback, the rollback's revision is the last deployed",
                vec![
                    rev(1, "superseded", BEFORE),
                    rev(2, "failed", BEFORE),
                    rev(3, "deployed", BEFORE),
                    rev(4, "failed", DURING),
                ],
                None,
                failed(4, Some(3)),
            ),
            (
                "the tests of an upgrade failed: its revision is deployed",
                vec![rev(1, "superseded", BEFORE), rev(2, "deployed", DURING)],
                Some(2),
                failed(2, Some(1)),
            ),
            (
                "the tests of an install failed",
                vec![rev(1, "deployed", DURING)],
                Some(1),
                failed(1, None),
            ),
            (
                "the tests failed again after a retry: not back to the first try's revision",
                vec![
                    rev(1, "superseded", BEFORE),
                    rev(2, "superseded", DURING),
                    rev(3, "deployed", DURING),
                ],
                Some(3),
                failed(3, Some(1)),
            ),
            (
                "an install's retry failed again",
                vec![rev(1, "failed", DURING), rev(2, "failed", DURING)],
                None,
                failed(2, None),
            ),
            (
                "helm wrote nothing (a rendering error): the failed record is an older run's",
                vec![rev(1, "deployed", BEFORE), rev(2, "failed", BEFORE)],
                None,
                None,
            ),
            (
                "helm wrote nothing and the release is deployed",
                vec![rev(1, "deployed", BEFORE)],
                None,
                None,
            ),
            ("no release at all (chart not found)", vec![], None, None),
            (
                "left pending (killed): recovery's business, not remediation's",
                vec![
                    rev(1, "deployed", BEFORE),
                    rev(2, "pending-upgrade", DURING),
                ],
                None,
                None,
            ),
            (
                "a failed record of an unknown time proves nothing",
                vec![rev(2, "deployed", BEFORE), unknown_time],
                None,
                None,
            ),
        ];
        for (what, history, tested, want) in cases {
            assert_eq!(judge_failure(&history, tested, since), want, "{what}");
        }
    }

    fn remediation(
        install: (u32, InstallStrategy),
        upgrade: (u32, UpgradeStrategy),
    ) -> Remediation {
        Remediation {
            install: Side {
                retries: install.0,
                strategy: install.1,
            },
            upgrade: Side {
                retries: upgrade.0,
                strategy: upgrade.1,
            },
        }
    }

    #[test]
    fn retries_come_first_then_the_strategy_of_the_kind_of_deploy_that_failed() {
        use InstallStrategy::Uninstall;
        use UpgradeStrategy::Rollback;
        let keep = (0, InstallStrategy::Keep);
        let keep_upgrade = (0, UpgradeStrategy::Keep);
        let install = FailedDeploy {
            revision: 1,
            last_deployed: None,
        };
        let upgrade = FailedDeploy {
            revision: 4,
            last_deployed: Some(3),
        };
        assert_eq!(install.deploy(), Deploy::Install);
        assert_eq!(upgrade.deploy(), Deploy::Upgrade);
        // (remediation, what failed, tries so far, what to do)
        let cases = [
            // The default: nothing, as before remediation existed.
            (Remediation::default(), install, 1, Remedy::Untouched),
            (Remediation::default(), upgrade, 1, Remedy::Untouched),
            // Only the other kind of deploy is remediated.
            (
                remediation((1, Uninstall), keep_upgrade),
                upgrade,
                1,
                Remedy::Untouched,
            ),
            (
                remediation(keep, (0, Rollback)),
                install,
                1,
                Remedy::Untouched,
            ),
            // Straight to the strategy.
            (
                remediation(keep, (0, Rollback)),
                upgrade,
                1,
                Remedy::Then(Strategy::Rollback(3)),
            ),
            (
                remediation((0, Uninstall), keep_upgrade),
                install,
                1,
                Remedy::Then(Strategy::Uninstall),
            ),
            // Retries, then the strategy.
            (
                remediation((1, Uninstall), keep_upgrade),
                install,
                1,
                Remedy::Retry,
            ),
            (
                remediation((1, Uninstall), keep_upgrade),
                install,
                2,
                Remedy::Then(Strategy::Uninstall),
            ),
            (remediation(keep, (2, Rollback)), upgrade, 2, Remedy::Retry),
            (
                remediation(keep, (2, Rollback)),
                upgrade,
                3,
                Remedy::Then(Strategy::Rollback(3)),
            ),
            // Retries with `keep`: tried again, then left as it is.
            (
                remediation(keep, (1, UpgradeStrategy::Keep)),
                upgrade,
                1,
                Remedy::Retry,
            ),
            (
                remediation(keep, (1, UpgradeStrategy::Keep)),
                upgrade,
                2,
                Remedy::Then(Strategy::Keep),
            ),
        ];
        for (remediation, failed, tries, want) in cases {
            assert_eq!(
                remedy(&remediation, failed, tries),
                want,
                "{remediation:?} {failed:?} try {tries}"
            );
        }
    }
}
