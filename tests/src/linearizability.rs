//! A linearizability checker for key-value histories, in the style of porcupine
//! (Wing & Gong's search with Lowe's memoization of (linearized set, state)).
//!
//! A history is a list of operations with call and return times as seen by the
//! clients. An operation whose outcome is unknown (the client timed out, the
//! connection broke) returns "at infinity": it may take effect at any point after
//! its call, or never, and its output is not checked. Operations that certainly did
//! not happen (connection refused, no leader) must be left out by the caller.
//!
//! Keys are independent (a history of a map is linearizable iff each key's is), so
//! the history is split per key and each part searched on its own.

use std::collections::{BTreeMap, HashSet};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Put(String),
    Get,
    /// Compare-and-swap: set to `new` if the value is `old`.
    Cas {
        old: String,
        new: String,
    },
    Delete,
}

/// What the client saw; `None` in [`Op::output`] means unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Ok,
    /// The value read (`None`: no such key).
    Value(Option<String>),
    /// Whether a CAS or delete took effect.
    Done(bool),
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub input: Input,
    pub call: u64,
    /// `None`: the outcome is unknown (returns at infinity).
    pub ret: Option<u64>,
    pub output: Option<Output>,
}

/// The register model of one key: its value, or none.
fn step(state: &Option<String>, input: &Input, output: Option<&Output>) -> Option<Option<String>> {
    match input {
        Input::Put(v) => match output {
            None | Some(Output::Ok) => Some(Some(v.clone())),
            _ => None,
        },
        Input::Get => match output {
            None => Some(state.clone()),
            Some(Output::Value(v)) if v == state => Some(state.clone()),
            _ => None,
        },
        Input::Cas { old, new } => {
            let matches = state.as_deref() == Some(old.as_str());
            match output {
                None => Some(if matches {
                    Some(new.clone())
                } else {
                    state.clone()
                }),
                Some(Output::Done(true)) if matches => Some(Some(new.clone())),
                Some(Output::Done(false)) if !matches => Some(state.clone()),
                _ => None,
            }
        }
        Input::Delete => {
            let exists = state.is_some();
            match output {
                None => Some(None),
                Some(Output::Done(d)) if *d == exists => Some(None),
                _ => None,
            }
        }
    }
}

/// The result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// The key whose history admits no linearization.
    Violation {
        key: String,
    },
    /// The search gave up (too many states) on this key.
    Unknown {
        key: String,
    },
}

/// Check a whole history (all keys start absent).
pub fn check(ops: &[Op], max_states: usize) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        match check_key(&ops, max_states) {
            Some(true) => {}
            Some(false) => {
                return Verdict::Violation {
                    key: key.to_string(),
                };
            }
            None => {
                return Verdict::Unknown {
                    key: key.to_string(),
                };
            }
        }
    }
    Verdict::Linearizable
}

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// Partner event index (the call's return, or the return's call).
    partner: usize,
    prev: usize,
    next: usize,
}

/// Lowe's just-in-time linearization search over a doubly linked list of events.
fn check_key(ops: &[&Op], max_states: usize) -> Option<bool> {
    let n = ops.len();
    if n == 0 {
        return Some(true);
    }
    // Events sorted by time; at equal times calls come first (concurrent).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, true, i));
        order.push((op.ret.unwrap_or(u64::MAX), false, i));
    }
    order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    const HEAD: usize = usize::MAX;
    let len = order.len();
    let mut events: Vec<Event> = order
        .iter()
        .enumerate()
        .map(|(k, &(_, is_call, op))| Event {
            op,
            is_call,
            partner: 0,
            prev: if k == 0 { HEAD } else { k - 1 },
            next: if k + 1 == len { HEAD } else { k + 1 },
        })
        .collect();
    let mut call_at = vec![0usize; n];
    let mut ret_at = vec![0usize; n];
    for (k, e) in events.iter().enumerate() {
        if e.is_call {
            call_at[e.op] = k;
        } else {
            ret_at[e.op] = k;
        }
    }
    for e in &mut events {
        e.partner = if e.is_call {
            ret_at[e.op]
        } else {
            call_at[e.op]
        };
    }
    let mut head = 0usize;

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<String> = None;
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut cursor = head;

    // Remove event k from the list.
    fn unlink(events: &mut [Event], head: &mut usize, k: usize) {
        let (p, nx) = (events[k].prev, events[k].next);
        if p == usize::MAX {
            *head = nx;
        } else {
            events[p].next = nx;
        }
        if nx != usize::MAX {
            events[nx].prev = p;
        }
    }
    // Put event k back where it was (its neighbours still point past it).
    fn relink(events: &mut [Event], head: &mut usize, k: usize) {
        let (p, nx) = (events[k].prev, events[k].next);
        if p == usize::MAX {
            *head = k;
        } else {
            events[p].next = k;
        }
        if nx != usize::MAX {
            events[nx].prev = k;
        }
    }

    loop {
        if head == HEAD {
            return Some(true);
        }
        if cursor == HEAD {
            // Unreachable: the last event is always a return.
            return Some(false);
        }
        let e = events[cursor];
        if e.is_call {
            let op = ops[e.op];
            if let Some(next_state) = step(&state, &op.input, op.output.as_ref()) {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((lin.clone(), next_state.clone())) {
                    if cache.len() > max_states {
                        return None;
                    }
                    stack.push((cursor, state));
                    state = next_state;
                    linearized = lin;
                    // Lift the call and its return out of the list.
                    unlink(&mut events, &mut head, e.partner);
                    unlink(&mut events, &mut head, cursor);
                    cursor = head;
                    continue;
                }
            }
            cursor = e.next;
        } else {
            // A return reached before its call was linearized: backtrack.
            let Some((k, prev_state)) = stack.pop() else {
                return Some(false);
            };
            let op = events[k].op;
            state = prev_state;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut events, &mut head, k);
            let partner = events[k].partner;
            relink(&mut events, &mut head, partner);
            cursor = events[k].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, input: Input, call: u64, ret: Option<u64>, output: Option<Output>) -> Op {
        Op {
            client,
            key: "k".into(),
            input,
            call,
            ret,
            output,
        }
    }

    fn val(s: &str) -> Option<Output> {
        Some(Output::Value(Some(s.into())))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(0, Input::Put("a".into()), 0, Some(10), Some(Output::Ok)),
            op(1, Input::Get, 20, Some(30), val("a")),
            op(
                0,
                Input::Cas {
                    old: "a".into(),
                    new: "b".into(),
                },
                40,
                Some(50),
                Some(Output::Done(true)),
            ),
            op(1, Input::Delete, 60, Some(70), Some(Output::Done(true))),
            op(1, Input::Get, 80, Some(90), Some(Output::Value(None))),
        ];
        assert_eq!(check(&h, 100_000), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        let h = vec![
            op(0, Input::Put("a".into()), 0, Some(10), Some(Output::Ok)),
            op(0, Input::Put("b".into()), 20, Some(30), Some(Output::Ok)),
            op(1, Input::Get, 40, Some(50), val("a")),
        ];
        assert_eq!(check(&h, 100_000), Verdict::Violation { key: "k".into() });
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let h = vec![
            op(0, Input::Put("a".into()), 0, Some(100), Some(Output::Ok)),
            op(1, Input::Put("b".into()), 10, Some(90), Some(Output::Ok)),
            op(2, Input::Get, 95, Some(99), val("a")),
            op(3, Input::Get, 120, Some(130), val("a")),
        ];
        assert_eq!(check(&h, 100_000), Verdict::Linearizable);
        // Once a later read saw b, a read of a after it is impossible.
        let mut h2 = h.clone();
        h2.push(op(2, Input::Get, 140, Some(150), val("b")));
        assert_eq!(check(&h2, 100_000), Verdict::Violation { key: "k".into() });
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let lost = vec![
            op(0, Input::Put("a".into()), 0, None, None),
            op(1, Input::Get, 50, Some(60), Some(Output::Value(None))),
        ];
        assert_eq!(check(&lost, 100_000), Verdict::Linearizable);
        let happened = vec![
            op(0, Input::Put("a".into()), 0, None, None),
            op(1, Input::Get, 50, Some(60), val("a")),
            op(1, Input::Get, 70, Some(80), Some(Output::Value(None))),
        ];
        // Seen, then gone again without a delete: not linearizable.
        assert_eq!(
            check(&happened, 100_000),
            Verdict::Violation { key: "k".into() }
        );
    }

    #[test]
    fn a_lost_acknowledged_cas_is_a_violation() {
        let h = vec![
            op(0, Input::Put("a".into()), 0, Some(10), Some(Output::Ok)),
            op(
                1,
                Input::Cas {
                    old: "a".into(),
                    new: "b".into(),
                },
                20,
                Some(30),
                Some(Output::Done(true)),
            ),
            op(
                2,
                Input::Cas {
                    old: "a".into(),
                    new: "c".into(),
                },
                40,
                Some(50),
                Some(Output::Done(true)),
            ),
        ];
        assert_eq!(check(&h, 100_000), Verdict::Violation { key: "k".into() });
    }
}
