//! Fairness across namespaces, for every queue the operator shares between them (start slots,
//! write slots): each namespace with waiters has its own FIFO, and the namespaces take turns in
//! the order they started waiting. A namespace that queued a thousand waiters delays another
//! namespace's single waiter by at most one turn per waiting namespace, not by its whole burst.
//! A queue may pass over namespaces that may not be served now ([`RoundRobin::pop_where`]: the
//! write slots skip a namespace at its own limit, the start slots serve the namespace holding the
//! fewest first); those keep their place. A namespace's FIFO and turn exist only while it has
//! waiters, so the memory is bounded by the waiters. All namespaces have the same weight.

use std::collections::{HashMap, VecDeque};

/// Waiters of type `T`, one FIFO per namespace, served round-robin over the namespaces.
pub struct RoundRobin<T> {
    /// Per namespace with waiters, its waiters in arrival order (never empty).
    lanes: HashMap<String, VecDeque<T>>,
    /// The namespaces with waiters, next turn first.
    turns: VecDeque<String>,
    /// Waiters in all lanes.
    len: usize,
}

impl<T> Default for RoundRobin<T> {
    fn default() -> Self {
        RoundRobin {
            lanes: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> RoundRobin<T> {
    /// Appends `item` to `namespace`'s FIFO; a namespace that had no waiters takes the last
    /// turn.
    pub fn push(&mut self, namespace: &str, item: T) {
        let lane = self.lanes.entry(namespace.to_owned()).or_default();
        if lane.is_empty() {
            self.turns.push_back(namespace.to_owned());
        }
        lane.push_back(item);
        self.len = self.len.saturating_add(1);
    }

    /// The front waiter of the namespace whose turn it is; that namespace moves to the last
    /// turn if it still has waiters.
    pub fn pop(&mut self) -> Option<T> {
        self.pop_where(|_| true)
    }

    /// Like [`RoundRobin::pop`], among the namespaces `eligible` admits: the first of them in
    /// turn order is served and moves to the last turn; the namespaces passed over keep their
    /// place, so each is first in line again once it is eligible.
    pub fn pop_where(&mut self, eligible: impl Fn(&str) -> bool) -> Option<T> {
        loop {
            let at = self.turns.iter().position(|ns| eligible(ns))?;
            let ns = self.turns.remove(at)?;
            let Some(lane) = self.lanes.get_mut(&ns) else {
                continue;
            };
            let Some(next) = lane.pop_front() else {
                self.lanes.remove(&ns);
                continue;
            };
            if lane.is_empty() {
                self.lanes.remove(&ns);
            } else {
                self.turns.push_back(ns);
            }
            self.len = self.len.saturating_sub(1);
            return Some(next);
        }
    }

    /// Takes the waiters of `namespace` that `which` picks out of the queue; true when one was
    /// there. A namespace left without waiters gives up its turn.
    pub fn remove(&mut self, namespace: &str, which: impl Fn(&T) -> bool) -> bool {
        let Some(lane) = self.lanes.get_mut(namespace) else {
            return false;
        };
        let before = lane.len();
        lane.retain(|w| !which(w));
        let removed = before.saturating_sub(lane.len());
        if lane.is_empty() {
            self.lanes.remove(namespace);
            self.turns.retain(|n| n != namespace);
        }
        self.len = self.len.saturating_sub(removed);
        removed > 0
    }

    /// Waiters in all namespaces.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The namespaces with waiters, next turn first.
    pub fn turns(&self) -> impl Iterator<Item = &str> {
        self.turns.iter().map(String::as_str)
    }
}

/// Slots held, per namespace and in all: what a queue of [`RoundRobin`] waiters weighs a
/// namespace by (its own limit, or who holds the fewest). Memory: one entry per namespace
/// holding a slot.
#[derive(Debug, Default)]
pub struct Holdings {
    /// Per namespace holding any (never zero).
    per_namespace: HashMap<String, usize>,
    total: usize,
}

impl Holdings {
    /// `namespace` takes a slot.
    pub fn take(&mut self, namespace: &str) {
        self.total = self.total.saturating_add(1);
        let held = self.per_namespace.entry(namespace.to_owned()).or_default();
        *held = held.saturating_add(1);
    }

    /// `namespace` gives a slot back.
    pub fn give_back(&mut self, namespace: &str) {
        self.total = self.total.saturating_sub(1);
        if let Some(held) = self.per_namespace.get_mut(namespace) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.per_namespace.remove(namespace);
            }
        }
    }

    /// Slots `namespace` holds.
    pub fn of(&self, namespace: &str) -> usize {
        self.per_namespace.get(namespace).copied().unwrap_or(0)
    }

    /// Slots held in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// True when no namespace holds a slot.
    pub fn is_empty(&self) -> bool {
        self.total == 0 && self.per_namespace.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a-3` is waiter `a-3` in namespace `a`.
    fn pushed(names: &[&'static str]) -> RoundRobin<&'static str> {
        let mut rr = RoundRobin::default();
        for name in names {
            let ns = name.split('-').next().unwrap_or_default();
            rr.push(ns, *name);
        }
        rr
    }

    fn drained(rr: &mut RoundRobin<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| rr.pop()).collect()
    }

    #[test]
    fn namespaces_take_turns_and_each_keeps_its_arrival_order() {
        let table: &[(&[&str], &[&str])] = &[
            (&["a-1", "a-2", "a-3", "b-1"], &["a-1", "b-1", "a-2", "a-3"]),
            (
                &["a-1", "b-1", "c-1", "a-2", "b-2"],
                &["a-1", "b-1", "c-1", "a-2", "b-2"],
            ),
            (
                &["a-1", "a-2", "b-1", "b-2", "b-3", "c-1"],
                &["a-1", "b-1", "c-1", "a-2", "b-2", "b-3"],
            ),
        ];
        for (names, served) in table {
            let mut rr = pushed(names);
            assert_eq!(rr.len(), names.len());
            assert_eq!(drained(&mut rr), *served, "pushed {names:?}");
            assert!(rr.is_empty() && rr.lanes.is_empty() && rr.turns.is_empty());
        }
    }

    #[test]
    fn a_namespace_served_to_its_last_waiter_joins_at_the_back_when_it_returns() {
        let mut rr = pushed(&["a-1", "a-2", "b-1"]);
        assert_eq!(rr.pop(), Some("a-1"));
        assert_eq!(rr.pop(), Some("b-1"));
        // b has no waiter left: its turn is gone, and a new b waiter waits behind a.
        rr.push("b", "b-2");
        assert_eq!(drained(&mut rr), ["a-2", "b-2"]);
    }

    #[test]
    fn a_namespace_passed_over_keeps_its_place_until_it_is_eligible() {
        let mut rr = pushed(&["a-1", "a-2", "b-1", "b-2", "c-1"]);
        let not_a = |ns: &str| ns != "a";
        assert_eq!(rr.pop_where(not_a), Some("b-1"));
        assert_eq!(rr.pop_where(not_a), Some("c-1"));
        assert_eq!(rr.pop_where(|ns| ns == "z"), None, "nobody eligible waits");
        assert_eq!(rr.turns().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(drained(&mut rr), ["a-1", "b-2", "a-2"]);
    }

    #[test]
    fn holdings_count_per_namespace_and_forget_a_namespace_that_gave_all_back() {
        let mut h = Holdings::default();
        for ns in ["a", "a", "b"] {
            h.take(ns);
        }
        assert_eq!((h.of("a"), h.of("b"), h.of("c"), h.total()), (2, 1, 0, 3));
        for ns in ["a", "b", "a"] {
            h.give_back(ns);
        }
        assert!(h.is_empty());
        h.give_back("a");
        assert!(h.is_empty(), "a slot given back twice counts once");
    }

    #[test]
    fn a_removed_last_waiter_gives_up_its_namespaces_turn() {
        let mut rr = pushed(&["a-1", "b-1", "a-2"]);
        assert!(rr.remove("b", |w| *w == "b-1"));
        assert!(!rr.remove("b", |w| *w == "b-1"), "removed once");
        assert!(!rr.remove("c", |_| true), "c never waited");
        assert_eq!(rr.len(), 2);
        assert_eq!(rr.turns().collect::<Vec<_>>(), ["a"]);
        assert_eq!(drained(&mut rr), ["a-1", "a-2"]);
    }
}
