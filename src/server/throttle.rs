//! Failed staff sign-ins: a budget of wrong guesses per account.
//!
//! Every account has a bucket of `limits.signin_failures` attempts that
//! refills evenly over `limits.signin_window_secs` (10 per 60 s by default:
//! one back every 6 s). An attempt takes one from the bucket before the
//! token is looked at, a successful one gives it back, a failed one keeps
//! it spent. While the bucket holds less than one, a sign-in for that
//! account is refused without looking at the token (`too_many_attempts`,
//! or 429 for reports), so a right guess cannot be told from a wrong one
//! either. Taking before checking (rather than counting failures after)
//! bounds what many connections saying hello at the same moment can try.
//!
//! The budget belongs to the account, never to a source address: kefu sits
//! behind the shop's proxy, where every client has the same address, and a
//! per-address lockout would let one guesser lock out every agent. Only
//! sign-ins are refused: an agent already connected is not touched, and
//! neither are buyers.
//!
//! Accounts are agents (shop, agent id) and each shop's reports (the shop's
//! supervisors share one budget: `/api/report` carries only a token, so a
//! wrong one cannot be pinned to a supervisor). Accounts the configuration
//! does not have (an unknown shop or agent id) are throttled exactly like
//! real ones, so the answers do not tell which ids exist; they are kept by
//! a keyed 64-bit hash of the ids (an id may be a 64 KiB string) in a table
//! of their own, capped at `limits.signin_tracked_unknown`, which evicts
//! the entries that have refilled and then the ones nearest to full (least recently failed).
//! Real accounts' table is bounded by the configuration, so a flood of
//! made-up ids can never evict a real account's lockout.
//!
//! A bucket that has refilled is forgotten, so the tables hold only
//! accounts with recent failures.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::time::Duration;

use tokio::time::Instant;

/// An account whose sign-ins are throttled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Account {
    /// An agent's WebSocket sign-in: shop, agent id.
    Agent(String, String),
    /// A shop's reports (`GET /api/report`), whichever supervisor asks.
    Reports(String),
}

impl std::fmt::Display for Account {
    /// `shop:agent` or `shop:reports`, ids escaped as in Rust strings
    /// (they come from the client) and cut to 64 characters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cut = |s: &str| -> String {
            let short: String = s.chars().take(64).collect();
            let esc = short.escape_debug().to_string();
            if short.len() < s.len() {
                format!("{esc}…")
            } else {
                esc
            }
        };
        match self {
            Account::Agent(shop, agent) => write!(f, "{}:{}", cut(shop), cut(agent)),
            Account::Reports(shop) => write!(f, "{}:reports", cut(shop)),
        }
    }
}

/// A refused attempt: the account's budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Locked {
    /// Whole seconds until the next attempt is allowed (at least 1).
    pub retry_after: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The token was right: the attempt's unit goes back.
    Success,
    /// The token was wrong (or missing).
    Failure,
}

/// One account's bucket, kept as the time it will be full again (the
/// "theoretical arrival time" of GCRA): whole `Duration`s, no rounding.
#[derive(Debug, Clone)]
struct Entry {
    /// When the bucket is full again; each attempt taken pushes it one
    /// `interval` later. At or before now: full (the entry can go).
    full_at: Instant,
    /// The lockout of this episode was logged (cleared when the bucket
    /// has refilled).
    warned: bool,
}

/// Buckets keyed by `K`, at most `cap` of them.
#[derive(Debug)]
pub(crate) struct Budgets<K> {
    map: HashMap<K, Entry>,
    cap: usize,
    /// The time the whole budget takes to refill (zero: throttling off).
    window: Duration,
    /// The time one attempt takes to come back: `window / failures`.
    interval: Duration,
}

impl<K: Hash + Eq + Clone> Budgets<K> {
    /// `failures` attempts refilling over `window`, at most `cap` buckets;
    /// `failures` 0 (or a zero window) turns throttling off.
    pub(crate) fn new(failures: u32, window: Duration, cap: usize) -> Budgets<K> {
        let on = failures > 0 && !window.is_zero();
        Budgets {
            map: HashMap::new(),
            cap: cap.max(1),
            window: if on { window } else { Duration::ZERO },
            interval: if on {
                window / failures
            } else {
                Duration::ZERO
            },
        }
    }

    fn off(&self) -> bool {
        self.window.is_zero()
    }

    /// Buckets held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Takes one attempt from `key`'s bucket, or says how long to wait.
    pub(crate) fn begin(&mut self, key: &K, now: Instant) -> Result<(), Locked> {
        if self.off() {
            return Ok(());
        }
        if !self.map.contains_key(key) {
            self.make_room(now);
        }
        let e = self.map.entry(key.clone()).or_insert(Entry {
            full_at: now,
            warned: false,
        });
        if e.full_at <= now {
            // Refilled since: a new episode.
            e.full_at = now;
            e.warned = false;
        }
        let after = e.full_at + self.interval;
        if after.saturating_duration_since(now) > self.window {
            // Less than one attempt left: the next comes back when
            // `after` is one window away.
            let wait = (after - self.window).saturating_duration_since(now);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(Locked {
                retry_after: secs.max(1),
            });
        }
        e.full_at = after;
        Ok(())
    }

    /// Ends an attempt `begin` let through. `true` when it was a failure
    /// that spent the budget and this lockout has not been reported yet
    /// (so it is logged once).
    pub(crate) fn end(&mut self, key: &K, outcome: Outcome, now: Instant) -> bool {
        if self.off() {
            return false;
        }
        let Some(e) = self.map.get_mut(key) else {
            // Evicted meanwhile (a full table of made-up ids): a failure
            // is recorded anew; a success had nothing to give back.
            if outcome == Outcome::Failure {
                self.make_room(now);
                self.map.insert(
                    key.clone(),
                    Entry {
                        full_at: now + self.interval,
                        warned: false,
                    },
                );
            }
            return false;
        };
        match outcome {
            Outcome::Success => {
                e.full_at = e.full_at.checked_sub(self.interval).unwrap_or(now).max(now);
                if e.full_at <= now {
                    self.map.remove(key);
                }
                false
            }
            Outcome::Failure => {
                let spent =
                    (e.full_at + self.interval).saturating_duration_since(now) > self.window;
                let newly = spent && !e.warned;
                e.warned |= spent;
                newly
            }
        }
    }

    /// Makes room for one more bucket: the ones that have refilled go
    /// first (they are as good as absent), then the ones nearest to full.
    fn make_room(&mut self, now: Instant) {
        if self.map.len() < self.cap {
            return;
        }
        self.map.retain(|_, e| e.full_at > now);
        while self.map.len() >= self.cap {
            let nearest = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.full_at)
                .map(|(k, _)| k.clone());
            match nearest {
                Some(k) => self.map.remove(&k),
                None => break,
            };
        }
    }
}

/// Every account's budget: the configured accounts', and a capped table
/// for ids the configuration does not have.
#[derive(Debug)]
pub(crate) struct SignIns {
    known: Budgets<Account>,
    unknown: Budgets<u64>,
    /// Keys the unknown ids' hashes: randomly seeded (SipHash), so nobody
    /// can make two ids share a bucket on purpose.
    hasher: RandomState,
}

/// An attempt `SignIns::begin` let through, to be ended with its outcome.
#[derive(Debug)]
pub(crate) struct Ticket {
    account: Account,
    slot: Slot,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Known,
    Unknown(u64),
    /// Throttling is off: nothing to end.
    None,
}

impl SignIns {
    pub(crate) fn new(limits: &crate::config::Limits) -> SignIns {
        let (failures, window) = (limits.signin_failures, limits.signin_window);
        SignIns {
            // Bounded by the configuration; the cap only guards a config
            // built in code with more accounts than anyone has.
            known: Budgets::new(failures, window, usize::MAX),
            unknown: Budgets::new(failures, window, limits.signin_tracked_unknown),
            hasher: RandomState::new(),
        }
    }

    /// Starts a sign-in for `account` (`known`: the configuration has it):
    /// `Err` while its budget is spent, and the token must not be checked.
    pub(crate) fn begin(
        &mut self,
        account: Account,
        known: bool,
        now: Instant,
    ) -> Result<Ticket, Locked> {
        let slot = if self.known.off() {
            Slot::None
        } else if known {
            self.known.begin(&account, now)?;
            Slot::Known
        } else {
            let h = self.hasher.hash_one(&account);
            self.unknown.begin(&h, now)?;
            Slot::Unknown(h)
        };
        Ok(Ticket { account, slot })
    }

    /// Ends a sign-in `begin` let through; logs (once) the failure that
    /// spends an account's budget, naming the account, never the token.
    pub(crate) fn end(&mut self, ticket: Ticket, outcome: Outcome, now: Instant) {
        let newly_locked = match ticket.slot {
            Slot::Known => self.known.end(&ticket.account, outcome, now),
            Slot::Unknown(h) => self.unknown.end(&h, outcome, now),
            Slot::None => false,
        };
        if newly_locked {
            tracing::warn!(
                account = %ticket.account,
                known = matches!(ticket.slot, Slot::Known),
                "too many failed sign-ins: further ones for this account are refused \
                 without checking the token until its budget refills"
            );
        }
    }

    /// Buckets held for unknown ids (tests).
    #[cfg(test)]
    pub(crate) fn unknown_len(&self) -> usize {
        self.unknown.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a scripted sign-in sequence against one bucket.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Time passes (injected: the clock is an argument).
        Wait(u64),
        /// An attempt that must get through and then fails.
        Fail,
        /// An attempt that must get through and then succeeds.
        Succeed,
        /// An attempt that must be refused with this `retry_after`.
        Refused(u64),
    }
    use Step::*;

    /// (name, budget, window in seconds, steps, lockouts to be logged).
    #[test]
    fn budgets_follow_the_script() {
        let cases: &[(&str, u32, u64, &[Step], usize)] = &[
            (
                "ten failures lock; the eleventh is refused",
                10,
                60,
                &[
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Refused(6),
                ],
                1,
            ),
            (
                "refused attempts neither count nor extend the lockout",
                2,
                60,
                &[
                    Fail,
                    Fail,
                    Refused(30),
                    Refused(30),
                    Wait(29),
                    Refused(1),
                    Wait(1),
                    Fail,
                    Refused(30),
                ],
                1,
            ),
            (
                "one attempt comes back per window / budget",
                10,
                60,
                &[
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Fail,
                    Wait(5),
                    Refused(1),
                    Wait(1),
                    Fail,
                    Refused(6),
                ],
                1,
            ),
            (
                "after the window the whole budget is back",
                3,
                60,
                &[
                    Fail,
                    Fail,
                    Fail,
                    Refused(20),
                    Wait(60),
                    Fail,
                    Fail,
                    Fail,
                    Refused(20),
                ],
                2,
            ),
            (
                "successes cost nothing and do not reset the failures",
                3,
                60,
                &[Fail, Fail, Succeed, Succeed, Fail, Refused(20)],
                1,
            ),
            (
                "a lockout refilling one attempt at a time is logged once",
                2,
                20,
                &[Fail, Fail, Wait(10), Fail, Wait(10), Fail, Refused(10)],
                1,
            ),
            (
                "a budget of 0 turns it off",
                0,
                60,
                &[Fail, Fail, Fail, Fail],
                0,
            ),
        ];
        for (name, budget, window, steps, want_logged) in cases {
            let mut b: Budgets<&str> = Budgets::new(*budget, Duration::from_secs(*window), 10);
            let mut now = Instant::now();
            let mut logged = 0;
            for (i, step) in steps.iter().enumerate() {
                let what = format!("{name}: step {i} ({step:?})");
                match *step {
                    Wait(s) => now += Duration::from_secs(s),
                    Fail | Succeed => {
                        assert_eq!(b.begin(&"s1:a1", now), Ok(()), "{what}");
                        let outcome = if matches!(step, Fail) {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        logged += usize::from(b.end(&"s1:a1", outcome, now));
                    }
                    Refused(secs) => {
                        assert_eq!(
                            b.begin(&"s1:a1", now),
                            Err(Locked { retry_after: secs }),
                            "{what}"
                        );
                    }
                }
            }
            assert_eq!(logged, *want_logged, "{name}: lockouts logged");
        }
    }

    /// Accounts have budgets of their own.
    #[test]
    fn one_accounts_failures_leave_the_others_alone() {
        let mut b: Budgets<&str> = Budgets::new(2, Duration::from_secs(60), 10);
        let now = Instant::now();
        for _ in 0..2 {
            b.begin(&"a1", now).unwrap();
            b.end(&"a1", Outcome::Failure, now);
        }
        assert!(b.begin(&"a1", now).is_err());
        assert_eq!(b.begin(&"a2", now), Ok(()));
    }

    /// Attempts taken before their outcome is known count: many
    /// connections saying hello at once get the budget, not more.
    #[test]
    fn attempts_in_flight_share_the_budget() {
        let mut b: Budgets<&str> = Budgets::new(3, Duration::from_secs(60), 10);
        let now = Instant::now();
        let got: Vec<bool> = (0..5).map(|_| b.begin(&"a1", now).is_ok()).collect();
        assert_eq!(got, [true, true, true, false, false]);
        // One of them was the right token: its attempt comes back.
        b.end(&"a1", Outcome::Success, now);
        assert_eq!(b.begin(&"a1", now), Ok(()));
    }

    /// A refilled bucket is forgotten; a full table drops refilled
    /// buckets first, then the one nearest to full (the least recently
    /// failed), and never grows past its cap.
    #[test]
    fn the_table_is_bounded() {
        let cases: &[(&str, u64, usize, &[u32], bool)] = &[
            // (name, seconds between accounts, cap, accounts failing once,
            //  whether account 0 is still remembered at the end)
            ("refilled ones are dropped", 60, 3, &[0, 1, 2, 3, 4], false),
            (
                "least recently failed goes first",
                0,
                3,
                &[0, 1, 2, 3],
                false,
            ),
            ("recently failed stays", 0, 3, &[0, 1, 2, 0, 3], true),
        ];
        for (name, gap, cap, failing, kept) in cases {
            let mut b: Budgets<u32> = Budgets::new(2, Duration::from_secs(60), *cap);
            let mut now = Instant::now();
            for k in *failing {
                now += Duration::from_secs(*gap) + Duration::from_millis(1);
                b.begin(k, now).unwrap();
                b.end(k, Outcome::Failure, now);
                assert!(b.len() <= *cap, "{name}: {} buckets", b.len());
            }
            assert_eq!(b.map.contains_key(&0), *kept, "{name}");
        }
        // A success on a fresh bucket leaves nothing behind.
        let mut b: Budgets<u32> = Budgets::new(2, Duration::from_secs(60), 3);
        let now = Instant::now();
        b.begin(&7, now).unwrap();
        b.end(&7, Outcome::Success, now);
        assert_eq!(b.len(), 0);
    }

    /// Made-up ids are throttled as real ones are, in a capped table of
    /// hashes that cannot push out a real account's lockout.
    #[test]
    fn unknown_ids_are_throttled_alike_in_a_table_of_their_own() {
        let limits = crate::config::Limits {
            signin_failures: 2,
            signin_window: Duration::from_secs(60),
            signin_tracked_unknown: 4,
            ..crate::config::Limits::default()
        };
        let mut s = SignIns::new(&limits);
        let now = Instant::now();
        let real = || Account::Agent("s1".into(), "a1".into());
        let fake = |i: usize| Account::Agent("s1".into(), format!("nobody{i}"));
        for _ in 0..2 {
            let t = s.begin(real(), true, now).unwrap();
            s.end(t, Outcome::Failure, now);
            let t = s.begin(fake(0), false, now).unwrap();
            s.end(t, Outcome::Failure, now);
        }
        assert_eq!(
            s.begin(real(), true, now).unwrap_err(),
            s.begin(fake(0), false, now).unwrap_err(),
            "the same answer for a real and a made-up id"
        );
        for i in 1..100 {
            let t = s.begin(fake(i), false, now).unwrap();
            s.end(t, Outcome::Failure, now);
            assert!(s.unknown_len() <= 4);
        }
        assert!(s.begin(real(), true, now).is_err(), "still locked");
        let long = Account::Agent("x".repeat(70), "好\n".repeat(40));
        let shown = long.to_string();
        assert!(shown.contains("\\n") && shown.contains('…'), "{shown}");
    }
}
