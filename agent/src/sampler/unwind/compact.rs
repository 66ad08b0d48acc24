//! A fast path in front of framehop for the frames every sample repeats.
//!
//! framehop looks an address up in its rule cache and executes the rule;
//! for a return-address frame that costs about 15 ns, so a 50-frame stack
//! spends most of the handler's time there. This cache maps a return address
//! straight to a [`CompactRule`] (derived from framehop's own answer, see
//! `arch::derive_compact_rule`) executed inline: a multiply, a compare and
//! one or two stack reads per frame. Addresses whose rule does not fit a
//! compact shape are cached as such and handed to framehop every time.
//!
//! In front of the hash table sits a memo of the previous walk, indexed by
//! depth: consecutive samples of a thread share most of their stack, so
//! frame `d` usually has the same return address as last time, and checking
//! that costs one sequential load instead of a hash and a random one.
//!
//! Each scratch entry owns one cache, so no synchronisation is needed.
//! Entries are tagged with the unwind-table generation they were derived
//! under; a new module set invalidates them without a clear.

use crate::sampler::arch::CompactRule;

const SLOTS: usize = 2048;
/// Depths remembered from the previous walk.
const MEMO_DEPTH: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Slot {
    return_address: u64,
    generation: u32,
    /// `None`: framehop's rule here has no compact form.
    rule: Option<CompactRule>,
}

/// Direct-mapped cache of compact rules by return address, behind a memo of
/// the previous walk.
pub(crate) struct CompactRuleCache {
    slots: Box<[Slot]>,
    /// `memo[d]` is the return address and rule found at depth `d` last time.
    memo: Box<[(u64, CompactRule)]>,
    /// The table generation the memo was filled under.
    memo_generation: u32,
}

/// A cache lookup's answer.
pub(crate) enum Cached {
    Rule(CompactRule),
    /// Known to have no compact rule.
    FramehopOnly,
    Miss,
}

impl CompactRuleCache {
    pub(crate) fn new() -> Self {
        let empty = Slot {
            return_address: 0,
            generation: 0,
            rule: None,
        };
        CompactRuleCache {
            slots: vec![empty; SLOTS].into_boxed_slice(),
            memo: vec![(0, CompactRule::EndOfStack); MEMO_DEPTH].into_boxed_slice(),
            memo_generation: 0,
        }
    }

    pub(crate) const fn memory_bytes() -> usize {
        SLOTS * std::mem::size_of::<Slot>() + MEMO_DEPTH * std::mem::size_of::<(u64, CompactRule)>()
    }

    /// Starts a walk under table `generation`: a memo from other tables is
    /// forgotten.
    ///
    /// # Signal safety
    /// A compare and at most one small `memset`-free reset.
    #[inline(always)]
    pub(crate) fn begin_walk(&mut self, generation: u32) {
        if self.memo_generation != generation {
            self.memo_generation = generation;
            for entry in self.memo.iter_mut() {
                entry.0 = 0;
            }
        }
    }

    /// The rule for the frame at `depth` returning to `return_address`.
    ///
    /// # Signal safety
    /// Loads and compares; on a hash hit, one store into the memo.
    #[inline(always)]
    pub(crate) fn lookup(&mut self, depth: usize, return_address: u64) -> Cached {
        if let Some(&(memo_address, rule)) = self.memo.get(depth)
            && memo_address == return_address
        {
            return Cached::Rule(rule);
        }
        let cached = self.get(return_address, self.memo_generation);
        if let (Cached::Rule(rule), Some(entry)) = (&cached, self.memo.get_mut(depth)) {
            *entry = (return_address, *rule);
        }
        cached
    }

    /// Records what was derived for `return_address` at `depth`.
    ///
    /// # Signal safety
    /// Two stores.
    #[inline(always)]
    pub(crate) fn remember(
        &mut self,
        depth: usize,
        return_address: u64,
        rule: Option<CompactRule>,
    ) {
        self.insert(return_address, self.memo_generation, rule);
        if let (Some(rule), Some(entry)) = (rule, self.memo.get_mut(depth)) {
            *entry = (return_address, rule);
        }
    }

    #[inline(always)]
    fn index(return_address: u64) -> usize {
        // Fibonacci hashing: the top bits of the product spread nearby
        // return addresses over the table.
        (return_address.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros()))
            as usize
    }

    /// # Signal safety
    /// One load and compare.
    #[inline(always)]
    fn get(&self, return_address: u64, generation: u32) -> Cached {
        let slot = &self.slots[Self::index(return_address)];
        if slot.return_address != return_address || slot.generation != generation {
            return Cached::Miss;
        }
        match slot.rule {
            Some(rule) => Cached::Rule(rule),
            None => Cached::FramehopOnly,
        }
    }

    /// # Signal safety
    /// One store.
    #[inline(always)]
    fn insert(&mut self, return_address: u64, generation: u32, rule: Option<CompactRule>) {
        self.slots[Self::index(return_address)] = Slot {
            return_address,
            generation,
            rule,
        };
    }
}
