//! Interned stacks and threads.
//!
//! Stacks are stored as a prefix tree (a calling-context tree): a node is a
//! (caller node, frame) pair, and a stack is identified by its leaf-most
//! node. Stacks that share a root-side prefix, which in a service is almost
//! all of them, share its nodes, so memory grows with the number of distinct
//! *calling contexts*, not samples × depth.
//!
//! Frames are *lookup addresses*: the interrupted instruction pointer for the
//! leaf, and return address − 1 for callers, so that each address falls
//! inside the call instruction and symbolises to the calling line.
//!
//! Both tables have a fixed capacity. When a table fills, the collector
//! compacts it to the entries still referenced; only if that does not free
//! space is a sample dropped (and counted).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::sampler::span_context::SpanLabel;

/// Identifies an interned stack: the index of its leaf-most node.
pub(crate) type StackId = u32;
/// Identifies an interned (thread id, thread name) pair.
pub(crate) type ThreadKey = u32;

/// Pseudo-frame at the root of a stack cut at the depth limit.
pub(crate) const TRUNCATED_FRAME: u64 = 1;

/// No caller: the node is a root frame.
const NO_PARENT: u32 = u32::MAX;

/// The multiply-rotate hash of rustc's `FxHasher`: the keys here are small
/// integers from our own process (no adversary picks them), so SipHash's
/// flood resistance buys nothing and costs most of the collector's time.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    #[inline]
    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[derive(Debug, Clone, Copy)]
struct Node {
    parent: u32,
    frame: u64,
}

/// The calling-context tree.
#[derive(Debug)]
pub(crate) struct StackTable {
    nodes: Vec<Node>,
    index: FastMap<(u32, u64), u32>,
    capacity: usize,
}

impl StackTable {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        StackTable {
            nodes: Vec::new(),
            index: FastMap::default(),
            capacity: capacity.min(NO_PARENT as usize),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn is_nearly_full(&self) -> bool {
        self.nodes.len() + self.capacity / 16 >= self.capacity
    }

    /// Approximate bytes held (nodes plus hash index).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.index.capacity() * (std::mem::size_of::<((u32, u64), u32)>() + 1)
    }

    /// Interns the stack whose frames are given root first. `None` if the
    /// table is full (a stack with no frames is also `None`).
    pub(crate) fn intern(&mut self, root_first: impl IntoIterator<Item = u64>) -> Option<StackId> {
        let mut parent = NO_PARENT;
        for frame in root_first {
            parent = match self.index.get(&(parent, frame)) {
                Some(&node) => node,
                None => {
                    if self.nodes.len() >= self.capacity {
                        return None;
                    }
                    let node = self.nodes.len() as u32;
                    self.nodes.push(Node { parent, frame });
                    self.index.insert((parent, frame), node);
                    node
                }
            };
        }
        (parent != NO_PARENT).then_some(parent)
    }

    /// The stack's innermost frame.
    pub(crate) fn leaf(&self, stack: StackId) -> Option<u64> {
        self.nodes.get(stack as usize).map(|n| n.frame)
    }

    /// The stack's frames, leaf first, appended to `out`.
    pub(crate) fn frames_into(&self, stack: StackId, out: &mut Vec<u64>) {
        let mut node = stack;
        while let Some(n) = self.nodes.get(node as usize) {
            out.push(n.frame);
            node = n.parent;
        }
    }

    /// Rebuilds the table with only the `live` stacks (and their prefixes),
    /// returning where each live stack moved.
    pub(crate) fn compact(
        &mut self,
        live: impl IntoIterator<Item = StackId>,
    ) -> FastMap<StackId, StackId> {
        let old = std::mem::replace(self, StackTable::with_capacity(self.capacity));
        let mut frames = Vec::new();
        let mut moved = FastMap::default();
        for stack in live {
            if moved.contains_key(&stack) {
                continue;
            }
            frames.clear();
            old.frames_into(stack, &mut frames);
            if let Some(new_id) = self.intern(frames.iter().rev().copied()) {
                moved.insert(stack, new_id);
            }
        }
        moved
    }
}

/// Where a sample ran: a thread as profiles show it, and the span it was in
/// (captures keep spans, for pprof labels; the history does not).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ThreadInfo {
    pub(crate) tid: i32,
    pub(crate) name: String,
    pub(crate) span: Option<SpanLabel>,
}

/// Interned threads.
#[derive(Debug)]
pub(crate) struct ThreadTable {
    threads: Vec<ThreadInfo>,
    index: HashMap<ThreadInfo, ThreadKey>,
    capacity: usize,
}

impl ThreadTable {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        ThreadTable {
            threads: Vec::new(),
            index: HashMap::new(),
            capacity,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.threads.len() >= self.capacity
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.threads
            .iter()
            .map(|t| t.name.capacity())
            .sum::<usize>()
            * 2
            + self.threads.capacity() * std::mem::size_of::<ThreadInfo>() * 2
    }

    pub(crate) fn intern(
        &mut self,
        tid: i32,
        name: &str,
        span: Option<SpanLabel>,
    ) -> Option<ThreadKey> {
        let info = ThreadInfo {
            tid,
            name: name.to_owned(),
            span,
        };
        if let Some(&key) = self.index.get(&info) {
            return Some(key);
        }
        if self.is_full() {
            return None;
        }
        let key = self.threads.len() as ThreadKey;
        self.threads.push(info.clone());
        self.index.insert(info, key);
        Some(key)
    }

    pub(crate) fn get(&self, key: ThreadKey) -> Option<&ThreadInfo> {
        self.threads.get(key as usize)
    }

    /// Keeps only `live` threads, returning where each moved.
    pub(crate) fn compact(
        &mut self,
        live: impl IntoIterator<Item = ThreadKey>,
    ) -> FastMap<ThreadKey, ThreadKey> {
        let old = std::mem::replace(self, ThreadTable::with_capacity(self.capacity));
        let mut moved = FastMap::default();
        for key in live {
            if let (Some(info), false) = (old.get(key), moved.contains_key(&key))
                && let Some(new_key) = self.intern(info.tid, &info.name, info.span)
            {
                moved.insert(key, new_key);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_first(table: &StackTable, id: StackId) -> Vec<u64> {
        let mut out = Vec::new();
        table.frames_into(id, &mut out);
        out
    }

    #[test]
    fn shared_prefixes_share_nodes() {
        let mut table = StackTable::with_capacity(100);
        let a = table.intern([10, 20, 30]).unwrap();
        let b = table.intern([10, 20, 31]).unwrap();
        let again = table.intern([10, 20, 30]).unwrap();
        assert_eq!(a, again);
        assert_ne!(a, b);
        assert_eq!(table.len(), 4);
        assert_eq!(leaf_first(&table, a), vec![30, 20, 10]);
        assert_eq!(leaf_first(&table, b), vec![31, 20, 10]);
    }

    #[test]
    fn full_table_refuses_then_compaction_frees() {
        let mut table = StackTable::with_capacity(4);
        let keep = table.intern([1, 2]).unwrap();
        let _gone = table.intern([5, 6]).unwrap();
        assert_eq!(table.intern([7, 8]), None);
        let moved = table.compact([keep]);
        assert_eq!(table.len(), 2);
        assert_eq!(leaf_first(&table, moved[&keep]), vec![2, 1]);
        assert!(table.intern([7, 8]).is_some());
    }

    #[test]
    fn threads_intern_by_id_and_name() {
        let mut threads = ThreadTable::with_capacity(2);
        let a = threads.intern(10, "worker", None).unwrap();
        assert_eq!(threads.intern(10, "worker", None), Some(a));
        let renamed = threads.intern(10, "renamed", None).unwrap();
        assert_ne!(a, renamed);
        assert_eq!(threads.intern(11, "x", None), None, "full");
        let moved = threads.compact([renamed]);
        assert_eq!(threads.get(moved[&renamed]).unwrap().name, "renamed");
    }
}
