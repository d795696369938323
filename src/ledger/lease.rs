//! The lease rule, written once for both backends: given a request's cursor
//! and lease as read under the request's write lock (PostgreSQL's row lock,
//! SQLite's write transaction), what a claim gets.

use std::collections::HashMap;

use super::group_commit::ClaimOp;
use super::Claim;

/// A request's cursor and lease as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub(super) struct LeaseState {
    pub cursor: i64,
    pub lease_owner: Option<String>,
    /// Ms since the epoch, the ledger's clock.
    pub lease_until: Option<i64>,
    /// The step message the lease was taken for.
    pub lease_seq: Option<i64>,
    /// Its plan step (absent in leases written before the column existed).
    pub lease_step: Option<i64>,
}

/// Who asks for the lease: the step message `seq` of plan step `step`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Claimant<'a> {
    pub seq: i64,
    pub step: i64,
    pub owner: &'a str,
}

/// What a claim gets (an unknown request is the caller's to tell).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// A newer step message was already claimed or published.
    Stale,
    /// Another copy holds a live lease.
    Busy { until_ms: i64, holder: String },
    /// The lease is the claimant's. `interrupted`: it takes over a copy's
    /// lease that ran out unreleased (that copy's worker died or stalled
    /// mid-step, so its provider call may have been made).
    Granted { interrupted: bool },
}

/// The rule. A claim older than the cursor is stale. A lease that is free,
/// the claimant's own, or held by the claimant's predecessor is granted at
/// once: only a later message *and* a later plan step than the lease's is the
/// holder's successor (published after the holder's step was recorded); a
/// lease with no step noted (an older version's) counts as the same step.
/// Otherwise the holder is a copy of the same step: the claim waits while its
/// lease runs (`until > now`), and takes it over, `interrupted`, once it ran
/// out (a released lease has no owner; an abandoned one ran out at 0).
pub(super) fn decide(state: &LeaseState, claim: &Claimant<'_>, now_ms: i64) -> Decision {
    if claim.seq < state.cursor {
        return Decision::Stale;
    }
    let (Some(holder), Some(until)) = (&state.lease_owner, state.lease_until) else {
        return Decision::Granted { interrupted: false };
    };
    let successor = claim.seq > state.lease_seq.unwrap_or(i64::MAX)
        && claim.step > state.lease_step.unwrap_or(i64::MAX);
    if holder == claim.owner || successor {
        Decision::Granted { interrupted: false }
    } else if until > now_ms {
        Decision::Busy {
            until_ms: until,
            holder: holder.clone(),
        }
    } else {
        Decision::Granted { interrupted: true }
    }
}

impl LeaseState {
    /// The state once `claim` was granted a lease until `until_ms`: the
    /// claimant holds it, and the cursor is at least its message.
    pub fn take(&mut self, claim: &Claimant<'_>, until_ms: i64) {
        self.cursor = self.cursor.max(claim.seq);
        self.lease_owner = Some(claim.owner.to_string());
        self.lease_until = Some(until_ms);
        self.lease_seq = Some(claim.seq);
        self.lease_step = Some(claim.step);
    }
}

/// What one claim of a batch got: not the lease (unknown request, stale,
/// busy), or the lease.
pub(super) enum InBatch {
    Refused(Claim),
    Granted { interrupted: bool },
}

/// Decides claim `c` of a batch against `leases` as the batch's earlier
/// writes left them (both backends). A lease granted is taken there, so the
/// batch's later claims see it, and its request is noted in `taken` (once).
pub(super) fn decide_in_batch<'w>(
    leases: &mut HashMap<String, LeaseState>,
    c: &'w ClaimOp,
    now_ms: i64,
    taken: &mut Vec<&'w str>,
) -> InBatch {
    let Some(state) = leases.get_mut(&c.request_id) else {
        return InBatch::Refused(Claim::Unknown);
    };
    let claimant = Claimant {
        seq: c.seq,
        step: c.step,
        owner: &c.owner,
    };
    match decide(state, &claimant, now_ms) {
        Decision::Stale => InBatch::Refused(Claim::Stale),
        Decision::Busy { until_ms, holder } => InBatch::Refused(Claim::Busy { until_ms, holder }),
        Decision::Granted { interrupted } => {
            state.take(&claimant, now_ms + c.lease_ms);
            if !taken.contains(&c.request_id.as_str()) {
                taken.push(&c.request_id);
            }
            InBatch::Granted { interrupted }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;

    /// What, the stored state, the claim (seq, step, owner), what it gets.
    type Case = (&'static str, LeaseState, (i64, i64, &'static str), Decision);

    fn held(owner: &str, until: i64, seq: i64, step: Option<i64>) -> LeaseState {
        LeaseState {
            cursor: seq,
            lease_owner: Some(owner.into()),
            lease_until: Some(until),
            lease_seq: Some(seq),
            lease_step: step,
        }
    }

    #[test]
    fn the_rule() {
        let free = LeaseState {
            cursor: 2,
            ..LeaseState::default()
        };
        let busy = |holder: &str, until| Decision::Busy {
            until_ms: until,
            holder: holder.into(),
        };
        let granted = Decision::Granted { interrupted: false };
        let interrupted = Decision::Granted { interrupted: true };
        #[rustfmt::skip]
        let table: &[Case] = &[
            ("older than the cursor", free.clone(), (1, 1, "b"), Decision::Stale),
            ("older than the cursor, even with a lease", held("a", NOW + 1, 2, Some(2)), (1, 1, "b"), Decision::Stale),
            ("no lease", free.clone(), (2, 2, "b"), granted.clone()),
            ("a newer message, no lease", free.clone(), (5, 5, "b"), granted.clone()),
            ("a released lease (no owner)", LeaseState { lease_until: None, lease_owner: None, ..held("a", NOW + 1, 2, Some(2)) }, (2, 2, "b"), granted.clone()),
            ("a live copy of the same message", held("a", NOW + 1, 2, Some(2)), (2, 2, "b"), busy("a", NOW + 1)),
            ("a newer message of the same step", held("a", NOW + 1, 2, Some(2)), (3, 2, "b"), busy("a", NOW + 1)),
            ("the same step under an older message", held("a", NOW + 1, 2, Some(2)), (2, 3, "b"), busy("a", NOW + 1)),
            ("the holder's successor", held("a", NOW + 1, 2, Some(2)), (3, 3, "b"), granted.clone()),
            ("a lease of an older version (no step)", held("a", NOW + 1, 2, None), (3, 3, "b"), busy("a", NOW + 1)),
            ("the holder itself", held("a", NOW + 1, 2, Some(2)), (2, 2, "a"), granted.clone()),
            ("a lease that ran out just now", held("a", NOW, 2, Some(2)), (2, 2, "b"), interrupted.clone()),
            ("a lease that ran out long ago", held("a", 0, 2, Some(2)), (3, 2, "b"), interrupted.clone()),
            ("an expired lease of an older version", held("a", 0, 2, None), (3, 3, "b"), interrupted.clone()),
            ("a predecessor's expired lease", held("a", 0, 2, Some(2)), (3, 3, "b"), granted.clone()),
            ("the holder's own expired lease", held("a", 0, 2, Some(2)), (2, 2, "a"), granted.clone()),
        ];
        for (what, state, (seq, step, owner), expected) in table {
            let claim = Claimant {
                seq: *seq,
                step: *step,
                owner,
            };
            assert_eq!(&decide(state, &claim, NOW), expected, "{what}");
        }
    }

    #[test]
    fn a_granted_claim_holds_the_lease_and_moves_the_cursor_forward_only() {
        let mut state = held("a", NOW, 4, Some(4));
        let claim = Claimant {
            seq: 3,
            step: 3,
            owner: "b",
        };
        state.take(&claim, 9);
        assert_eq!(
            state,
            LeaseState {
                cursor: 4,
                lease_owner: Some("b".into()),
                lease_until: Some(9),
                lease_seq: Some(3),
                lease_step: Some(3),
            }
        );
    }
}
