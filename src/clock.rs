//! The response clock: rounds, nudges, breaches and holding replies.
//!
//! Taobao measures an agent by rounds, and so do we:
//!
//! - a **round** starts at the first buyer message that is not yet answered;
//! - further buyer messages in that round do not restart it;
//! - bot messages (greeting, holding reply) do not end it;
//! - the next **agent** reply in the conversation ends it.
//!
//! A round that stays open past `nudge` gets a nudge to the agent, past
//! `target` a breach, and past `holding` (if set) one holding reply from the
//! bot to the buyer.
//!
//! [`Clock`] is a plain data structure, driven by whoever owns it (the
//! server's timer task): it keeps one small entry per waiting conversation
//! and one ordered queue of alarm deadlines for all of them, so a shop with
//! 100,000 waiting buyers costs 100,000 map entries and one sleeping task,
//! not a task or a timer per message. It takes the current time as an
//! argument and never reads a clock itself, which keeps it testable
//! without a runtime.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// Looked up per buyer message and reply; foldhash (randomly seeded per
// process) is several times cheaper than SipHash on short ids.
use foldhash::{HashMap, HashMapExt};
use tokio::time::Instant;

/// How long a round may wait before each alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSettings {
    /// The response-time target (Taobao: 30 s).
    pub target: Duration,
    /// When to warn the agent; before `target`.
    pub nudge: Duration,
    /// When the bot sends the buyer one holding reply; `None` for never.
    pub holding: Option<Duration>,
}

impl Default for ClockSettings {
    fn default() -> Self {
        ClockSettings {
            target: Duration::from_secs(30),
            nudge: Duration::from_secs(20),
            holding: Some(Duration::from_secs(15)),
        }
    }
}

/// What is due when a deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alarm {
    Holding,
    Nudge,
    Breach,
}

impl Alarm {
    const ALL: [Alarm; 3] = [Alarm::Holding, Alarm::Nudge, Alarm::Breach];

    fn index(self) -> usize {
        self as usize
    }
}

/// An open round of one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// The first unanswered buyer message.
    pub started: Instant,
    /// `started + target`.
    pub deadline: Instant,
    /// A holding (or offline) reply went out in this round.
    pub holding_sent: bool,
    pub nudged: bool,
    pub breached: bool,
}

/// A round, the deadlines of its pending alarms, and the queue key of the
/// one queued: the earliest.
#[derive(Debug)]
struct Entry {
    round: Round,
    pending: [Option<Instant>; 3],
    queued: Option<((Instant, u64), Alarm)>,
}

impl Entry {
    /// The pending alarm due first (on equal deadlines, in `Alarm` order).
    fn next(&self) -> Option<(Instant, Alarm)> {
        Alarm::ALL
            .into_iter()
            .filter_map(|a| self.pending[a.index()].map(|at| (at, a)))
            .min()
    }
}

/// Result of a buyer message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub round: Round,
    /// This message opened the round (false: it joined a running round).
    pub new: bool,
}

/// Open rounds keyed by conversation, and their alarms in deadline order.
#[derive(Debug)]
pub struct Clock<K> {
    settings: ClockSettings,
    rounds: HashMap<K, Entry>,
    /// (deadline, sequence) → alarm, for each round's next alarm only: the
    /// following one is queued when it fires. A third of the tree work per
    /// buyer message and reply (and of the tree) next to queueing all three
    /// up front. The sequence number keeps equal deadlines apart and fires
    /// them in the order they were queued.
    queue: BTreeMap<(Instant, u64), (K, Alarm)>,
    seq: u64,
}

impl<K: Clone + Eq + Hash> Clock<K> {
    pub fn new(settings: ClockSettings) -> Clock<K> {
        Clock {
            settings,
            rounds: HashMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
        }
    }

    pub fn settings(&self) -> ClockSettings {
        self.settings
    }

    /// A buyer message at `now`: opens a round unless one is open.
    pub fn buyer_message(&mut self, key: &K, now: Instant) -> Started {
        if let Some(e) = self.rounds.get(key) {
            return Started {
                round: e.round,
                new: false,
            };
        }
        let s = self.settings;
        let round = Round {
            started: now,
            deadline: now + s.target,
            holding_sent: false,
            nudged: false,
            breached: false,
        };
        self.open(key, round);
        Started { round, new: true }
    }

    /// Queues `round` of `key` with every alarm it has not been given yet,
    /// at its usual time after the round's start.
    fn open(&mut self, key: &K, round: Round) {
        let s = self.settings;
        let mut pending = [None; 3];
        for alarm in Alarm::ALL {
            let (after, given) = match alarm {
                Alarm::Holding => match s.holding {
                    Some(d) => (d, round.holding_sent),
                    None => continue,
                },
                Alarm::Nudge => (s.nudge, round.nudged),
                Alarm::Breach => (s.target, round.breached),
            };
            if !given {
                pending[alarm.index()] = Some(round.started + after);
            }
        }
        let mut entry = Entry {
            round,
            pending,
            queued: None,
        };
        queue_next(&mut self.queue, &mut self.seq, key, &mut entry);
        self.rounds.insert(key.clone(), entry);
    }

    /// Brings back an open round as it was before a restart: `started`
    /// and the alarms already given (`holding_sent`, `nudged`,
    /// `breached`); the others stay pending at their usual times, so one
    /// that fell due while the service was down fires at the next
    /// [`Clock::pop_due`], once. The deadline follows the current settings.
    /// Replaces any round of `key`.
    pub fn resume(&mut self, key: &K, round: Round) {
        self.remove(key);
        let round = Round {
            deadline: round.started + self.settings.target,
            ..round
        };
        self.open(key, round);
    }

    /// An agent reply: ends the open round, returning it.
    pub fn agent_reply(&mut self, key: &K) -> Option<Round> {
        self.remove(key)
    }

    /// Forgets the conversation's round and alarms (reply or conversation closed).
    pub fn remove(&mut self, key: &K) -> Option<Round> {
        let entry = self.rounds.remove(key)?;
        if let Some((at, _)) = entry.queued {
            self.queue.remove(&at);
        }
        Some(entry.round)
    }

    /// The open round of `key`, if its buyer waits.
    pub fn round(&self, key: &K) -> Option<&Round> {
        self.rounds.get(key).map(|e| &e.round)
    }

    /// Claims the round's one holding reply: true (and the timed holding
    /// alarm is cancelled) if a round is open and none was sent yet.
    pub fn take_holding(&mut self, key: &K) -> bool {
        let Clock {
            rounds, queue, seq, ..
        } = self;
        let Some(e) = rounds.get_mut(key) else {
            return false;
        };
        if e.round.holding_sent {
            return false;
        }
        e.round.holding_sent = true;
        if e.pending[Alarm::Holding.index()].take().is_some() {
            // Queued, it was due first: the next alarm takes its place.
            if let Some((at, Alarm::Holding)) = e.queued {
                queue.remove(&at);
                queue_next(queue, seq, key, e);
            }
        }
        true
    }

    /// When the next alarm is due.
    pub fn next_alarm(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|((at, _), _)| *at)
    }

    /// Pops the earliest alarm due at `now`: the conversation, the alarm,
    /// the round as it is after the alarm (a popped holding alarm marks the
    /// holding reply as sent) and when the alarm was due.
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, Alarm, Round, Instant)> {
        let entry = self.queue.first_entry()?;
        let due = entry.key().0;
        if due > now {
            return None;
        }
        let (key, alarm) = entry.remove();
        let e = self
            .rounds
            .get_mut(&key)
            .expect("every queued alarm belongs to an open round");
        e.pending[alarm.index()] = None;
        match alarm {
            Alarm::Holding => e.round.holding_sent = true,
            Alarm::Nudge => e.round.nudged = true,
            Alarm::Breach => e.round.breached = true,
        }
        queue_next(&mut self.queue, &mut self.seq, &key, e);
        Some((key, alarm, e.round, due))
    }

    /// Number of open rounds.
    pub fn waiting(&self) -> usize {
        self.rounds.len()
    }

    /// Number of pending alarms, queued or not yet (a walk over the
    /// rounds: for tests and benchmarks, not the hot path).
    pub fn alarms(&self) -> usize {
        self.rounds
            .values()
            .map(|e| e.pending.iter().flatten().count())
            .sum()
    }
}

/// Queues `entry`'s next alarm (its previous one, if any, left the queue).
fn queue_next<K: Clone>(
    queue: &mut BTreeMap<(Instant, u64), (K, Alarm)>,
    seq: &mut u64,
    key: &K,
    entry: &mut Entry,
) {
    entry.queued = entry.next().map(|(at, alarm)| {
        *seq += 1;
        queue.insert((at, *seq), (key.clone(), alarm));
        ((at, *seq), alarm)
    });
}

/// Converts the runtime's monotonic clock to Unix milliseconds.
///
/// Timestamps on the wire are Unix ms, but deadlines run on
/// `tokio::time::Instant` so that tests can pause and advance time; deriving
/// one from the other keeps both consistent under virtual time.
#[derive(Debug, Clone, Copy)]
pub struct Timebase {
    instant: Instant,
    unix_ms: i64,
}

impl Timebase {
    pub fn new() -> Timebase {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timebase {
            instant: Instant::now(),
            unix_ms,
        }
    }

    /// Unix ms of `at`.
    pub fn ms(&self, at: Instant) -> i64 {
        if at >= self.instant {
            self.unix_ms + at.duration_since(self.instant).as_millis() as i64
        } else {
            self.unix_ms - self.instant.duration_since(at).as_millis() as i64
        }
    }

    /// The instant of Unix ms `ms` (the inverse of [`Timebase::ms`]), for
    /// times read back from the event log. One the platform cannot
    /// represent (before the monotonic clock's start, i.e. before the
    /// machine booted, where that clock cannot go below zero) comes out as
    /// `self`'s: late, rather than a panic.
    pub fn instant(&self, ms: i64) -> Instant {
        let d = Duration::from_millis(ms.abs_diff(self.unix_ms));
        if ms >= self.unix_ms {
            self.instant + d
        } else {
            self.instant.checked_sub(d).unwrap_or(self.instant)
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.ms(Instant::now())
    }
}

impl Default for Timebase {
    fn default() -> Self {
        Timebase::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Feeds a script of (second, event) to a clock and collects the alarms
    /// as (second, conversation, alarm), popping due alarms before each step.
    fn run(
        settings: ClockSettings,
        script: &[(u64, &str, char)],
        until: u64,
    ) -> Vec<(u64, String, Alarm)> {
        let t0 = Instant::now();
        let mut clock: Clock<String> = Clock::new(settings);
        let mut fired = Vec::new();
        let drain =
            |clock: &mut Clock<String>, upto: u64, fired: &mut Vec<(u64, String, Alarm)>| {
                while let Some(at) = clock.next_alarm() {
                    if at > t0 + secs(upto) {
                        break;
                    }
                    let (k, a, _, due) = clock.pop_due(at).unwrap();
                    assert_eq!(due, at);
                    fired.push(((at - t0).as_secs(), k, a));
                }
            };
        for &(t, conv, ev) in script {
            drain(&mut clock, t, &mut fired);
            let now = t0 + secs(t);
            let conv = conv.to_string();
            match ev {
                'b' => {
                    clock.buyer_message(&conv, now);
                }
                'a' => {
                    clock.agent_reply(&conv);
                }
                'h' => {
                    clock.take_holding(&conv);
                }
                _ => unreachable!(),
            }
        }
        drain(&mut clock, until, &mut fired);
        fired
    }

    #[test]
    fn rounds_follow_taobao_rules() {
        use Alarm::*;
        let no_holding = ClockSettings {
            holding: None,
            ..ClockSettings::default()
        };
        let with_holding = ClockSettings::default();
        // Holding after the nudge: the queued alarm is not the holding one
        // when the round starts.
        let late_holding = ClockSettings {
            holding: Some(Duration::from_secs(25)),
            ..ClockSettings::default()
        };
        type Case<'a> = (
            &'a str,
            ClockSettings,
            &'a [(u64, &'a str, char)],
            u64,
            &'a [(u64, &'a str, Alarm)],
        );
        let cases: &[Case] = &[
            (
                "one unanswered message: nudge at 20, breach at 30",
                no_holding,
                &[(0, "c1", 'b')],
                100,
                &[(20, "c1", Nudge), (30, "c1", Breach)],
            ),
            (
                "more buyer messages do not restart the round",
                no_holding,
                &[(0, "c1", 'b'), (5, "c1", 'b'), (19, "c1", 'b')],
                100,
                &[(20, "c1", Nudge), (30, "c1", Breach)],
            ),
            (
                "an agent reply ends the round before the nudge",
                no_holding,
                &[(0, "c1", 'b'), (10, "c1", 'a')],
                100,
                &[],
            ),
            (
                "a reply between nudge and breach stops the breach",
                no_holding,
                &[(0, "c1", 'b'), (25, "c1", 'a')],
                100,
                &[(20, "c1", Nudge)],
            ),
            (
                "the next buyer message after a reply opens a new round",
                no_holding,
                &[(0, "c1", 'b'), (10, "c1", 'a'), (40, "c1", 'b')],
                100,
                &[(60, "c1", Nudge), (70, "c1", Breach)],
            ),
            (
                "an agent reply with no open round changes nothing",
                no_holding,
                &[(0, "c1", 'a'), (1, "c1", 'b')],
                100,
                &[(21, "c1", Nudge), (31, "c1", Breach)],
            ),
            (
                "conversations run their own clocks",
                no_holding,
                &[(0, "c1", 'b'), (3, "c2", 'b'), (21, "c1", 'a')],
                100,
                &[(20, "c1", Nudge), (23, "c2", Nudge), (33, "c2", Breach)],
            ),
            (
                "holding reply fires once per round",
                with_holding,
                &[(0, "c1", 'b'), (16, "c1", 'b')],
                100,
                &[(15, "c1", Holding), (20, "c1", Nudge), (30, "c1", Breach)],
            ),
            (
                "a holding reply taken early (offline) cancels the timed one",
                with_holding,
                &[(0, "c1", 'b'), (0, "c1", 'h')],
                100,
                &[(20, "c1", Nudge), (30, "c1", Breach)],
            ),
            (
                "each round gets its own holding reply",
                with_holding,
                &[(0, "c1", 'b'), (17, "c1", 'a'), (50, "c1", 'b')],
                100,
                &[
                    (15, "c1", Holding),
                    (65, "c1", Holding),
                    (70, "c1", Nudge),
                    (80, "c1", Breach),
                ],
            ),
            (
                "equal deadlines fire in the order the rounds started",
                with_holding,
                &[(0, "c2", 'b'), (0, "c1", 'b')],
                100,
                &[
                    (15, "c2", Holding),
                    (15, "c1", Holding),
                    (20, "c2", Nudge),
                    (20, "c1", Nudge),
                    (30, "c2", Breach),
                    (30, "c1", Breach),
                ],
            ),
            (
                "a late holding reply comes between nudge and breach",
                late_holding,
                &[(0, "c1", 'b')],
                100,
                &[(20, "c1", Nudge), (25, "c1", Holding), (30, "c1", Breach)],
            ),
            (
                "a late holding reply taken before the nudge (not queued yet)",
                late_holding,
                &[(0, "c1", 'b'), (5, "c1", 'h')],
                100,
                &[(20, "c1", Nudge), (30, "c1", Breach)],
            ),
            (
                "a late holding reply taken after the nudge (queued)",
                late_holding,
                &[(0, "c1", 'b'), (22, "c1", 'h')],
                100,
                &[(20, "c1", Nudge), (30, "c1", Breach)],
            ),
        ];
        for (name, settings, script, until, want) in cases {
            let got = run(*settings, script, *until);
            let want: Vec<(u64, String, Alarm)> = want
                .iter()
                .map(|(t, c, a)| (*t, c.to_string(), *a))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn round_reports_its_start_and_deadline() {
        let t0 = Instant::now();
        let mut clock: Clock<u32> = Clock::new(ClockSettings::default());
        let s = clock.buyer_message(&1, t0);
        assert!(s.new);
        assert_eq!(s.round.deadline, t0 + secs(30));
        let s2 = clock.buyer_message(&1, t0 + secs(7));
        assert!(!s2.new);
        assert_eq!(s2.round.started, t0);
        assert!(clock.take_holding(&1));
        assert!(!clock.take_holding(&1), "one holding reply per round");
        let ended = clock.agent_reply(&1).unwrap();
        assert_eq!(ended.started, t0);
        assert!(ended.holding_sent);
        assert_eq!(clock.waiting(), 0);
        assert_eq!(clock.alarms(), 0, "ending a round removes its alarms");
        assert!(!clock.take_holding(&1), "no round, no holding reply");
    }

    /// `alarms` counts every pending alarm, queued or not yet.
    #[test]
    fn alarms_count_every_pending_one() {
        let t0 = Instant::now();
        let mut clock: Clock<u32> = Clock::new(ClockSettings::default());
        clock.buyer_message(&1, t0);
        clock.buyer_message(&2, t0);
        assert_eq!(clock.alarms(), 6);
        assert!(clock.take_holding(&1));
        assert_eq!(clock.alarms(), 5);
        let (k, a, _, _) = clock.pop_due(t0 + secs(15)).unwrap();
        assert_eq!((k, a), (2, Alarm::Holding));
        assert_eq!(clock.alarms(), 4);
        let (k, a, _, _) = clock.pop_due(t0 + secs(20)).unwrap();
        assert_eq!((k, a), (1, Alarm::Nudge));
        assert_eq!(clock.alarms(), 3);
        clock.agent_reply(&2);
        assert_eq!(clock.alarms(), 1);
        assert_eq!(clock.next_alarm(), Some(t0 + secs(30)));
        assert!(!clock.take_holding(&1), "taken already this round");
    }

    #[test]
    fn pop_due_respects_now() {
        let t0 = Instant::now();
        let mut clock: Clock<u32> = Clock::new(ClockSettings::default());
        clock.buyer_message(&1, t0);
        assert_eq!(clock.pop_due(t0 + secs(14)), None);
        let (k, a, r, _) = clock.pop_due(t0 + secs(15)).unwrap();
        assert_eq!((k, a, r.holding_sent), (1, Alarm::Holding, true));
        assert_eq!(clock.next_alarm(), Some(t0 + secs(20)));
        assert!(clock.remove(&1).is_some());
        assert_eq!(clock.next_alarm(), None);
    }

    /// A resumed round keeps its start and fires only the alarms not yet
    /// given, each once, those already due at the first pop.
    #[test]
    fn a_resumed_round_fires_only_what_was_not_given() {
        let t0 = Instant::now();
        let mut clock: Clock<u32> = Clock::new(ClockSettings::default());
        let given = |holding_sent, nudged, breached| Round {
            started: t0,
            deadline: t0,
            holding_sent,
            nudged,
            breached,
        };
        clock.resume(&1, given(true, true, false));
        clock.resume(&2, given(true, true, true));
        clock.resume(&3, given(false, false, false));
        assert_eq!(clock.round(&1).unwrap().deadline, t0 + secs(30));
        assert_eq!(clock.waiting(), 3, "a round with nothing left still waits");
        let mut fired = Vec::new();
        while let Some((k, a, _, due)) = clock.pop_due(t0 + secs(100)) {
            fired.push((k, a, (due - t0).as_secs()));
        }
        fired.sort();
        use Alarm::*;
        assert_eq!(
            fired,
            [
                (1, Breach, 30),
                (3, Holding, 15),
                (3, Nudge, 20),
                (3, Breach, 30)
            ]
        );
        clock.resume(&1, given(false, false, false));
        assert_eq!(clock.alarms(), 3, "resuming replaces the round");
    }

    #[test]
    fn timebase_instants_round_trip() {
        let tb = Timebase::new();
        let now = Instant::now();
        for ms in [tb.ms(now), tb.ms(now) - 90_000, tb.ms(now) + 5_000] {
            assert_eq!(tb.ms(tb.instant(ms)), ms);
        }
        // Far before the monotonic clock's start: no panic (Linux even
        // represents it; elsewhere it is clamped).
        assert!(tb.instant(i64::MIN / 2) <= tb.instant);
    }

    #[test]
    fn timebase_is_consistent() {
        let tb = Timebase::new();
        let now = Instant::now();
        let a = tb.ms(now);
        assert_eq!(tb.ms(now + Duration::from_millis(1500)), a + 1500);
        assert!(a >= tb.unix_ms);
    }
}
