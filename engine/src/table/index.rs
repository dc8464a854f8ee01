//! A hash index of slab slots that grows without stopping the shard.
//!
//! `hashbrown` grows a table by rehashing every element into a new one at
//! once. A shard's id index at 7.3M pending challenges held ~230k slots, and
//! that rehash held the shard lock for up to 78 ms (90 issues over 10 ms while
//! one thread filled a table to 10M). Here a large table that is full is set
//! aside as `old`, a table of twice its capacity becomes `current`, and the
//! shard moves the old table's slots over a few at a time as it inserts
//! (walking its slab, see `Shard::migrate_step`); lookups look in both until
//! `old` is empty. The sweeper allocates the bigger table ahead of need,
//! outside the lock (`spare_room_wanted`): allocating and first touching a
//! 2.5 MB table under the lock still took 4 to 10 ms on this project's VM.
//!
//! Everything here runs under the shard's lock. It must never lose a slot:
//! a slot is in exactly one of the two tables; a value replaced in `old`
//! moves to `current`, so that the slab walk (which may already have passed
//! the new slot) never has to find it.

use hashbrown::HashTable;

/// Tables with room for fewer slots than this grow in place (a rehash of at
/// most ~8k slots, a fraction of a millisecond).
const GROW_IN_PLACE_BELOW: usize = 8192;

/// An index of slab slots (`u32`) in two tables, `current` and, while a
/// growth is being worked off, `old`.
pub(super) struct TwoTables<'a> {
    pub(super) current: &'a mut HashTable<u32>,
    pub(super) old: &'a mut HashTable<u32>,
}

impl TwoTables<'_> {
    /// Stores `slot`, which the index does not hold yet. A full large table
    /// starts a growth instead of rehashing in place (and `true` says so: the
    /// caller's walk over its slab starts again), into `spare` when it is
    /// big enough; if a growth is still being worked off when `current`
    /// fills, it is finished first, at once.
    pub(super) fn insert(
        &mut self,
        hash: u64,
        slot: u32,
        spare: &mut Option<HashTable<u32>>,
        rehash: impl Fn(&u32) -> u64,
    ) -> bool {
        let full = self.current.len() == self.current.capacity();
        let grow = full && self.current.capacity() >= GROW_IN_PLACE_BELOW;
        if grow {
            if !self.old.is_empty() {
                self.finish(&rehash);
            }
            let room = self.current.capacity() * 2;
            let next = spare
                .take()
                .filter(|t| t.capacity() >= room)
                .unwrap_or_else(|| HashTable::with_capacity(room));
            *self.old = std::mem::replace(self.current, next);
        }
        self.current.insert_unique(hash, slot, rehash);
        grow
    }

    /// Replaces the value `from` (under `hash`) by `to`; `false` if absent.
    pub(super) fn replace(
        &mut self,
        hash: u64,
        from: u32,
        to: u32,
        rehash: impl Fn(&u32) -> u64,
    ) -> bool {
        if let Some(v) = self.current.find_mut(hash, |&s| s == from) {
            *v = to;
            return true;
        }
        match self.old.find_entry(hash, |&s| s == from) {
            Ok(found) => {
                found.remove();
                self.current.insert_unique(hash, to, rehash);
                true
            }
            Err(_) => false,
        }
    }

    /// Removes the value `slot` (under `hash`); `false` if absent.
    pub(super) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        if let Ok(found) = self.current.find_entry(hash, |&s| s == slot) {
            found.remove();
            return true;
        }
        if let Ok(found) = self.old.find_entry(hash, |&s| s == slot) {
            found.remove();
            return true;
        }
        false
    }

    /// Moves `slot` (under `hash`) from `old` to `current` if it is there.
    pub(super) fn move_over(&mut self, hash: u64, slot: u32, rehash: impl Fn(&u32) -> u64) {
        if let Ok(found) = self.old.find_entry(hash, |&s| s == slot) {
            found.remove();
            self.current.insert_unique(hash, slot, rehash);
        }
    }

    /// Moves everything left in `old` at once (the fallback; a stop).
    pub(super) fn finish(&mut self, rehash: &impl Fn(&u32) -> u64) {
        let rest = std::mem::take(self.old);
        self.current.reserve(rest.len(), rehash);
        for slot in rest {
            self.current.insert_unique(rehash(&slot), slot, rehash);
        }
    }
}

/// The room a spare table for `current` should have, if one is worth
/// allocating now: the table is large enough to grow in steps, at least three
/// quarters full, and not still working off a growth.
pub(super) fn spare_room_wanted(
    current: &HashTable<u32>,
    old: &HashTable<u32>,
    spare: &Option<HashTable<u32>>,
) -> Option<usize> {
    let cap = current.capacity();
    let wanted = cap >= GROW_IN_PLACE_BELOW && current.len() * 4 >= cap * 3 && old.is_empty();
    let has = spare.as_ref().is_some_and(|t| t.capacity() >= cap * 2);
    (wanted && !has).then_some(cap * 2)
}

/// The slot matching `eq` under `hash`, in either table.
pub(super) fn find_in(
    current: &HashTable<u32>,
    old: &HashTable<u32>,
    hash: u64,
    eq: &mut impl FnMut(u32) -> bool,
) -> Option<u32> {
    current
        .find(hash, |&s| eq(s))
        .or_else(|| old.find(hash, |&s| eq(s)))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash the tests keep a value under: a multiplicative mix of it.
    fn h(v: &u32) -> u64 {
        u64::from(*v).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn a_full_large_table_is_set_aside_and_its_slots_move_over_one_by_one() {
        let (mut current, mut old) = (HashTable::new(), HashTable::new());
        let mut t = TwoTables {
            current: &mut current,
            old: &mut old,
        };
        let mut grew_at = None;
        for v in 0..20_000u32 {
            if t.insert(h(&v), v, &mut None, h) && grew_at.is_none() {
                grew_at = Some(v);
            }
        }
        let grew_at = grew_at.expect("a growth started");
        assert!(grew_at as usize >= GROW_IN_PLACE_BELOW / 2);
        assert!(!t.old.is_empty(), "nothing moved over yet");
        for v in 0..20_000u32 {
            assert_eq!(find_in(t.current, t.old, h(&v), &mut |s| s == v), Some(v));
        }
        for v in 0..20_000u32 {
            t.move_over(h(&v), v, h);
        }
        assert!(t.old.is_empty());
        assert_eq!(t.current.len(), 20_000);
    }

    #[test]
    fn a_value_replaced_or_removed_is_found_in_whichever_table_holds_it() {
        let (mut current, mut old) = (HashTable::new(), HashTable::new());
        old.insert_unique(h(&1), 1, h);
        old.insert_unique(h(&2), 2, h);
        current.insert_unique(h(&3), 3, h);
        let mut t = TwoTables {
            current: &mut current,
            old: &mut old,
        };
        // Replacing a value in `old` moves it to `current`: the slab walk may
        // already be past the new value's slot.
        let rehash = |v: &u32| if *v == 7 { h(&1) } else { h(v) };
        assert!(t.replace(h(&1), 1, 7, rehash));
        assert_eq!(t.old.len(), 1);
        assert_eq!(t.current.find(h(&1), |&s| s == 7), Some(&7));
        assert!(t.remove(h(&2), 2), "removed from old");
        assert!(t.remove(h(&3), 3), "removed from current");
        assert!(!t.remove(h(&3), 3));
        assert!(!t.replace(h(&9), 9, 10, h));
        assert!(t.old.is_empty());
    }

    #[test]
    fn a_growth_takes_the_spare_that_is_big_enough() {
        let (mut current, mut old) = (HashTable::new(), HashTable::new());
        let mut spare = None;
        let mut t = TwoTables {
            current: &mut current,
            old: &mut old,
        };
        let mut v = 0u32;
        while spare_room_wanted(t.current, t.old, &spare).is_none() {
            t.insert(h(&v), v, &mut spare, h);
            v += 1;
        }
        let room = spare_room_wanted(t.current, t.old, &spare).unwrap();
        assert!(t.current.len() * 4 >= t.current.capacity() * 3);
        spare = Some(HashTable::with_capacity(room));
        assert_eq!(spare_room_wanted(t.current, t.old, &spare), None);
        let spare_capacity = spare.as_ref().unwrap().capacity();
        while !t.insert(h(&v), v, &mut spare, h) {
            v += 1;
        }
        assert!(spare.is_none(), "the growth took the spare");
        assert_eq!(t.current.capacity(), spare_capacity);
        assert_eq!(
            spare_room_wanted(t.current, t.old, &spare),
            None,
            "no spare while a growth is worked off"
        );
    }

    #[test]
    fn finishing_moves_whatever_is_left() {
        let (mut current, mut old) = (HashTable::new(), HashTable::new());
        for v in 0..1000u32 {
            old.insert_unique(h(&v), v, h);
        }
        let mut t = TwoTables {
            current: &mut current,
            old: &mut old,
        };
        t.finish(&h);
        assert!(t.old.is_empty());
        assert_eq!(t.current.len(), 1000);
    }
}
