//! The resume decision: where a subscription continues when its position meets the
//! topic's, written once as pure functions. [`start`] answers a subscribe (the
//! `subscribed` reply); [`step`] decides, for the topic's tail and for a session's
//! catch-up reader, whether the page they just read can be delivered or the position
//! jumped. Both tables of docs/PROTOCOL.md §2.4 are these functions; the tests below walk
//! their rows.

use crate::store::Position;

/// Where a subscribe asks to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Live messages only, from the current top.
    Now,
    /// Everything still retained.
    Earliest,
    /// Every message after `seq` of `epoch`.
    After { epoch: String, seq: u64 },
}

/// Why a subscription's position jumped (`recovered: false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The topic's history was lost and restarted in a new epoch.
    EpochChanged,
    /// Messages after the position were already removed by retention.
    Trimmed,
    /// The position is beyond the topic's top (history rolled back, e.g. a failover).
    Ahead,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::EpochChanged => "epoch_changed",
            ResetReason::Trimmed => "trimmed",
            ResetReason::Ahead => "ahead",
        }
    }
}

/// The answer to a subscribe: the subscription continues after `last` in the topic's
/// current epoch. `recovered` says whether that is exactly where the client asked to
/// start; when it is not, `reason` says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub last: u64,
    pub recovered: bool,
    pub reason: Option<ResetReason>,
}

/// The subscribe rule (PROTOCOL.md §2.4, first table), from one snapshot of the topic.
pub fn start(p: &Position, since: &Since) -> Start {
    let current = p.epoch.as_deref().unwrap_or("");
    let exact = |last| Start { last, recovered: true, reason: None };
    let jump = |reason| Start { last: p.top, recovered: false, reason: Some(reason) };
    match since {
        Since::Now => exact(p.top),
        Since::Earliest => exact(if p.first_retained == 0 { p.top } else { p.first_retained - 1 }),
        Since::After { epoch, seq } if epoch.is_empty() && !current.is_empty() => {
            // A position seen before the topic had an epoch: nothing the client saw was
            // lost, so it gets the epoch from its start.
            let from = (*seq).max(first_epoch_start(p));
            if p.truncated(from) {
                jump(ResetReason::Trimmed)
            } else {
                exact(from)
            }
        }
        Since::After { epoch, seq } if p.carries_over(epoch, *seq) => {
            // The previous epoch's seqs up to base are this epoch's: nothing was lost.
            if p.truncated(*seq) {
                jump(ResetReason::Trimmed)
            } else {
                exact(*seq)
            }
        }
        Since::After { epoch, .. } if epoch != current => jump(ResetReason::EpochChanged),
        Since::After { seq, .. } if *seq > p.top => jump(ResetReason::Ahead),
        Since::After { seq, .. } if p.truncated(*seq) => jump(ResetReason::Trimmed),
        Since::After { seq, .. } => exact(*seq),
    }
}

/// Where a reader that saw the topic without any epoch starts in its current one: after
/// `base` when the epoch began the topic's numbering (the entries up to `base` are an
/// orphaned stream's, there before the meta was recreated), but from the start when the
/// epoch **continues** earlier ones (`prev`): the entries up to `base` are then the messages
/// of those epochs — all published after the reader found no epoch at all — renamed, not
/// older history. (Taking `base` there skipped them silently: a subscriber of a new topic
/// whose tail had not read yet when a failover or a slot migration started a continuing
/// epoch lost everything before it.) Retention that removed part of them is the usual
/// `trimmed` notice of the next read. The one case this over-delivers: an epoch chain whose
/// first epoch itself began on an orphaned stream also hands out that stream's entries.
fn first_epoch_start(p: &Position) -> u64 {
    if p.prev.is_some() {
        0
    } else {
        p.base
    }
}

/// Who read the snapshot: the rules differ in where a `trimmed` jump lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// The topic's tail task, for every live subscription of the node: after a trim it
    /// goes on from the oldest retained message (it owes them to its subscribers).
    Tail,
    /// A session's catch-up reader, for one subscription: after a trim it goes on from
    /// the top, like a subscribe that found its position trimmed.
    CatchUp,
}

/// What a reader does with the snapshot it read after its position `(epoch, last)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The position fits the snapshot: deliver the messages read after it.
    Deliver,
    /// The topic has no history right now (never published to, or its meta was lost and
    /// no publish has recreated it): deliver nothing; a reader without an epoch may join
    /// live delivery (the first publish is not a jump).
    Idle,
    /// The topic's history was lost and nothing recreated it yet: deliver nothing, keep
    /// the position, read again later (the publish that starts the new epoch is a jump).
    Wait,
    /// The topic got its first epoch since the reader last looked, or a new epoch that
    /// carries the reader's position over (`Position::carries_over`): continue after
    /// `last` in `epoch`, silently (nothing was missed).
    Adopt { epoch: String, last: u64 },
    /// The position jumped: tell the subscriber (`recovered: false`, `reason`) and
    /// continue after `last` in `epoch`.
    Jump { reason: ResetReason, epoch: String, last: u64 },
}

/// The reading rule (PROTOCOL.md §2.4, second table), from one snapshot of the topic.
pub fn step(p: &Position, epoch: &str, last: u64, reader: Reader) -> Step {
    let Some(current) = p.epoch.as_deref() else {
        return if epoch.is_empty() { Step::Idle } else { Step::Wait };
    };
    if current != epoch {
        return if epoch.is_empty() {
            Step::Adopt { epoch: current.to_string(), last: last.max(first_epoch_start(p)) }
        } else if p.carries_over(epoch, last) {
            Step::Adopt { epoch: current.to_string(), last }
        } else {
            Step::Jump { reason: ResetReason::EpochChanged, epoch: current.to_string(), last: p.base }
        };
    }
    let jump = |reason, last| Step::Jump { reason, epoch: current.to_string(), last };
    if last > p.top {
        return jump(ResetReason::Ahead, p.top);
    }
    if p.truncated(last) {
        return match reader {
            // The stream may be empty (everything trimmed): then after the top.
            Reader::Tail if p.first_retained > 0 => jump(ResetReason::Trimmed, p.first_retained - 1),
            _ => jump(ResetReason::Trimmed, p.top),
        };
    }
    Step::Deliver
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic in epoch "E" with top 20, seqs 11..=20 retained, numbered from `base` 0.
    fn topic() -> Position {
        Position { epoch: Some("E".into()), top: 20, first_retained: 11, base: 0, prev: None }
    }

    /// Epoch "NEW" continuing "E" after seq 15 (another primary wrote the topic; seqs up
    /// to 15 survived), top 20, seqs 11..=20 retained.
    fn continued() -> Position {
        Position { epoch: Some("NEW".into()), top: 20, first_retained: 11, base: 15, prev: Some("E".into()) }
    }

    /// Two epochs started before a reader looked again: "E" → "MID" after seq 15, then
    /// "MID" → "NEW" after seq 18 (a slot moved twice). A position of "E" carries over up
    /// to 15, one of "MID" up to 18.
    #[test]
    fn positions_carry_over_a_chain_of_epochs() {
        let p = Position {
            epoch: Some("NEW".into()),
            top: 20,
            first_retained: 1,
            base: 18,
            prev: Some("MID:18,E:15".into()),
        };
        assert!(p.carries_over("MID", 18) && !p.carries_over("MID", 19));
        assert!(p.carries_over("E", 15) && !p.carries_over("E", 16));
        assert!(!p.carries_over("OTHER", 1) && !p.carries_over("", 0));
        assert_eq!(step(&p, "E", 12, Reader::Tail), Step::Adopt { epoch: "NEW".into(), last: 12 });
        assert!(matches!(step(&p, "E", 17, Reader::Tail), Step::Jump { reason: ResetReason::EpochChanged, .. }));
        // A chain entry written before bounds were recorded is bounded by base.
        let old = Position { prev: Some("E".into()), ..p };
        assert!(old.carries_over("E", 18) && !old.carries_over("E", 19));
    }

    fn after(epoch: &str, seq: u64) -> Since {
        Since::After { epoch: epoch.into(), seq }
    }

    fn exact(last: u64) -> Start {
        Start { last, recovered: true, reason: None }
    }

    fn reset(last: u64, reason: ResetReason) -> Start {
        Start { last, recovered: false, reason: Some(reason) }
    }

    #[test]
    fn the_subscribe_table() {
        let p = topic();
        let renumbered = Position { base: 15, ..topic() };
        let untouched = Position { epoch: Some("E".into()), top: 20, first_retained: 1, base: 0, prev: None };
        let rows: Vec<(&str, Position, Since, Start)> = vec![
            ("since absent: new messages only", p.clone(), Since::Now, exact(20)),
            ("earliest: from the oldest retained", p.clone(), Since::Earliest, exact(10)),
            (
                "earliest on an empty stream: after the top",
                Position { first_retained: 0, ..topic() },
                Since::Earliest,
                exact(20),
            ),
            (
                "epoch \"\": a message after max(n, base) is trimmed",
                p.clone(),
                after("", 3),
                reset(20, ResetReason::Trimmed),
            ),
            ("epoch \"\": nothing missing, after n", untouched.clone(), after("", 3), exact(3)),
            (
                "epoch \"\": nothing missing, after base when base > n",
                Position { first_retained: 16, ..renumbered.clone() },
                after("", 3),
                exact(15),
            ),
            ("another epoch", p.clone(), after("OLD", 12), reset(20, ResetReason::EpochChanged)),
            ("n above the top", p.clone(), after("E", 21), reset(20, ResetReason::Ahead)),
            ("some message after n trimmed", p.clone(), after("E", 5), reset(20, ResetReason::Trimmed)),
            ("the first retained is n + 1: exact", p.clone(), after("E", 10), exact(10)),
            ("otherwise: exactly after n", p.clone(), after("E", 15), exact(15)),
            ("n = top: exact, nothing to send yet", p.clone(), after("E", 20), exact(20)),
            ("previous epoch, n <= base: exact", continued(), after("E", 12), exact(12)),
            ("previous epoch, n = base: exact", continued(), after("E", 15), exact(15)),
            (
                "previous epoch, n > base (rolled back): epoch changed",
                continued(),
                after("E", 16),
                reset(20, ResetReason::EpochChanged),
            ),
            ("previous epoch, n <= base but trimmed", continued(), after("E", 5), reset(20, ResetReason::Trimmed)),
            (
                "epoch \"\" facing a continuing epoch: its earlier epochs' messages are not skipped",
                Position { first_retained: 1, ..continued() },
                after("", 0),
                exact(0),
            ),
            (
                "epoch \"\" facing a continuing epoch, partly trimmed: trimmed",
                continued(),
                after("", 0),
                reset(20, ResetReason::Trimmed),
            ),
            ("an older epoch: epoch changed", continued(), after("OLDER", 12), reset(20, ResetReason::EpochChanged)),
        ];
        for (row, p, since, expected) in rows {
            assert_eq!(start(&p, &since), expected, "{row}");
        }
    }

    #[test]
    fn a_topic_without_an_epoch_follows_the_other_rows() {
        let none = Position { epoch: None, top: 0, first_retained: 0, base: 0, prev: None };
        assert_eq!(start(&none, &Since::Now), exact(0));
        assert_eq!(start(&none, &after("", 0)), exact(0));
        assert_eq!(start(&none, &after("", 4)), reset(0, ResetReason::Ahead));
        assert_eq!(start(&none, &after("E", 4)), reset(0, ResetReason::EpochChanged));
    }

    #[test]
    fn the_notice_table() {
        let p = topic();
        let new_epoch = Position { epoch: Some("NEW".into()), top: 3, first_retained: 1, base: 0, prev: None };
        let lost_meta = Position { epoch: None, top: 0, first_retained: 0, base: 0, prev: None };
        let emptied = Position { first_retained: 0, ..topic() };
        use Reader::{CatchUp, Tail};
        let jump = |reason, epoch: &str, last| Step::Jump { reason, epoch: epoch.into(), last };
        let rows: Vec<(&str, Position, &str, u64, Reader, Step)> = vec![
            (
                "tail: epoch changed: from the new epoch's base",
                new_epoch.clone(),
                "E",
                12,
                Tail,
                jump(ResetReason::EpochChanged, "NEW", 0),
            ),
            (
                "catch-up: epoch changed: from the new epoch's base",
                new_epoch.clone(),
                "E",
                12,
                CatchUp,
                jump(ResetReason::EpochChanged, "NEW", 0),
            ),
            ("tail: trimmed: from the oldest retained", p.clone(), "E", 5, Tail, jump(ResetReason::Trimmed, "E", 10)),
            (
                "tail: trimmed, empty stream: from the top",
                emptied.clone(),
                "E",
                5,
                Tail,
                jump(ResetReason::Trimmed, "E", 20),
            ),
            ("catch-up: trimmed: from the top", p.clone(), "E", 5, CatchUp, jump(ResetReason::Trimmed, "E", 20)),
            ("tail: ahead: from the top", p.clone(), "E", 25, Tail, jump(ResetReason::Ahead, "E", 20)),
            ("catch-up: ahead: from the top", p.clone(), "E", 25, CatchUp, jump(ResetReason::Ahead, "E", 20)),
            (
                "the topic got its first epoch: adopted silently",
                p.clone(),
                "",
                0,
                Tail,
                Step::Adopt { epoch: "E".into(), last: 0 },
            ),
            (
                "first epoch continuing a lost meta's numbering: from base",
                Position { base: 9, ..topic() },
                "",
                4,
                CatchUp,
                Step::Adopt { epoch: "E".into(), last: 9 },
            ),
            (
                "no epoch yet, then a continuing epoch (failover, slot move) before the first read: from the start",
                continued(),
                "",
                0,
                Tail,
                Step::Adopt { epoch: "NEW".into(), last: 0 },
            ),
            ("meta lost, nothing published since: wait", lost_meta.clone(), "E", 12, CatchUp, Step::Wait),
            ("meta lost: the tail waits too", lost_meta.clone(), "E", 12, Tail, Step::Wait),
            ("never published: idle", lost_meta.clone(), "", 0, CatchUp, Step::Idle),
            ("in place: deliver", p.clone(), "E", 10, CatchUp, Step::Deliver),
            ("at the top: deliver (nothing)", p.clone(), "E", 20, Tail, Step::Deliver),
            (
                "previous epoch, last <= base: carried over silently",
                continued(),
                "E",
                13,
                Tail,
                Step::Adopt { epoch: "NEW".into(), last: 13 },
            ),
            (
                "previous epoch, last > base (rolled back): epoch changed, from base",
                continued(),
                "E",
                17,
                CatchUp,
                jump(ResetReason::EpochChanged, "NEW", 15),
            ),
        ];
        for (row, p, epoch, last, reader, expected) in rows {
            assert_eq!(step(&p, epoch, last, reader), expected, "{row}");
        }
    }
}
