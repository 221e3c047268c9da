//! The online template miner: a Drain-style fixed-depth prefix tree over masked tokens.
//!
//! A line is masked ([`super::mask`]), then routed to a leaf keyed by its token count and
//! its first `depth - 2` tokens (a token holding a variable, or one past a node's
//! `max_children`, goes to the wildcard branch). The leaf's clusters are compared with the
//! line position by position, and the most similar one at or above `similarity_threshold`
//! absorbs the line, turning the positions that differ into `<*>`; otherwise the line
//! starts a new cluster.
//!
//! Masking finds the variables; plain words are taken as the constant text of an event.
//! So a cluster is a candidate only if no plain word of the line differs from a plain word
//! of the cluster (`… Transitioned from RUNNING to FAILED` never joins `… to SUCCEEDED`,
//! `stored as bytes` never joins `stored as values`), whatever the share of agreeing
//! positions. Words can still be variables (user names, host names without digits): when a
//! line finds no candidate but `word_variants` clusters of its leaf would have taken it
//! but for their words, the position is taken to be a variable after all and the most
//! similar of them absorbs the line. That also bounds the templates one word variable can
//! create.
//!
//! Bounded: at most `max_templates` clusters. When full, the least recently matched cluster
//! makes room if it has been idle for `min_idle_lines` lines; if not (a burst of unique
//! lines), the line is counted under the [`OVERFLOW_TEMPLATE`] instead of displacing live
//! templates. Lines are cut at `max_tokens` tokens, tokens over `max_token_len` bytes are
//! masked whole. Deterministic: the same lines in the same order give the same templates
//! and ids on every node.

use super::mask::{MaskedLine, WILDCARD, mask_line, words_differ};
use crate::rollup::hash::{FastMap, fast_map};

/// Stable identity of a template: the xxh3 hash of its text when it was created. It does
/// not change when the template later generalizes, so it can key counters and summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TemplateId(pub u64);

/// Body of the template that counts lines when the miner is full.
pub const OVERFLOW_TEMPLATE: &str = "<overflow>";

/// Id of [`OVERFLOW_TEMPLATE`]; never given to a mined template.
pub const OVERFLOW_TEMPLATE_ID: TemplateId = TemplateId(0);

/// Marks "no cluster" in the LRU links.
const NIL: u32 = u32::MAX;

/// Tunables of the miner. One default for every input: there are no per-source settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerConfig {
    /// Tree depth: the token count plus the first `depth - 2` tokens pick a leaf.
    pub depth: usize,
    /// Share of positions that must agree for a line to join a template.
    pub similarity_threshold: f64,
    /// Clusters of a leaf that may differ from a line only in plain words before the line
    /// generalizes one of them instead of starting another (see the module docs).
    pub word_variants: usize,
    /// Distinct tokens a tree node keeps before further ones go to its wildcard branch.
    pub max_children: usize,
    /// Most templates held; see the module docs for what happens past it.
    pub max_templates: usize,
    /// Lines the least recently matched template must have been idle before it is evicted
    /// to make room; younger ones are kept and the new line overflows.
    pub min_idle_lines: u64,
    /// Tokens of a line taken into account; the rest of the line is ignored.
    pub max_tokens: usize,
    /// Longer tokens are taken as payload and masked whole.
    pub max_token_len: usize,
}

impl Default for MinerConfig {
    fn default() -> Self {
        MinerConfig {
            depth: 4,
            similarity_threshold: 0.7,
            word_variants: 8,
            max_children: 100,
            max_templates: 1000,
            min_idle_lines: 10_000,
            max_tokens: 128,
            max_token_len: 128,
        }
    }
}

/// What [`TemplateMiner::add`] did with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateMatch<'a> {
    /// The template the line belongs to.
    pub id: TemplateId,
    /// The template's current text, tokens joined by single spaces, variables as `<*>`.
    pub template: &'a str,
    /// The line created this template.
    pub is_new: bool,
    /// The miner was full: the line is counted under [`OVERFLOW_TEMPLATE`].
    pub overflow: bool,
}

/// A template as listed by [`TemplateMiner::templates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateInfo<'a> {
    /// Stable id.
    pub id: TemplateId,
    /// Current text.
    pub template: &'a str,
    /// Lines matched since it was created.
    pub count: u64,
}

/// How a token of a line compares with a template's, see [`Cluster::compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Equal, or the same word.
    Same,
    /// Another plain word: another event, unless the word is a variable.
    OtherWord,
    /// Another value: the position is a variable.
    OtherValue,
}

/// One template and its bookkeeping.
#[derive(Debug)]
struct Cluster {
    id: TemplateId,
    /// Tokens joined by single spaces.
    text: String,
    /// Byte range of each token in `text`.
    ranges: Vec<(u32, u32)>,
    /// Positions generalized to `<*>` by merging lines.
    wild: Vec<bool>,
    /// Positions whose token holds a masked variable (from the line that created it).
    masked: Vec<bool>,
    /// Key of the leaf holding it, to unlink it on eviction.
    leaf: Box<[u8]>,
    /// Lines matched.
    count: u64,
    /// Value of the line clock when last matched.
    last_used: u64,
    /// LRU links (cluster slots), most recent at the head.
    prev: u32,
    next: u32,
    /// False once evicted; the slot waits for reuse.
    live: bool,
}

impl Cluster {
    fn token(&self, i: usize) -> &[u8] {
        let (s, e) = self.ranges[i];
        &self.text.as_bytes()[s as usize..e as usize]
    }

    /// Share of positions where the template's constant token equals the line's (`line`
    /// has the same number of tokens), and whether a plain word of the line differs from a
    /// plain word of the template; `None` once the share cannot reach `threshold`. As in
    /// Drain, generalized positions do not count as agreeing: a template that is mostly
    /// `<*>` needs its few constants to match.
    fn similarity(&self, line: &MaskedLine, threshold: f64) -> Option<(f64, bool)> {
        let n = self.ranges.len();
        if n == 0 {
            return Some((1.0, false));
        }
        let mut misses = 0usize;
        let mut word_conflict = false;
        for i in 0..n {
            let same = !self.wild[i]
                && match self.compare(i, line) {
                    Compare::Same => true,
                    Compare::OtherWord => {
                        word_conflict = true;
                        false
                    }
                    Compare::OtherValue => false,
                };
            if !same {
                misses += 1;
                if ((n - misses) as f64 / n as f64) < threshold {
                    return None;
                }
            }
        }
        Some(((n - misses) as f64 / n as f64, word_conflict))
    }

    /// How token `i` of the template compares with the line's: plain words that differ in
    /// punctuation only (`LOOKING,` and `LOOKING.`) count as the same word.
    fn compare(&self, i: usize, line: &MaskedLine) -> Compare {
        let (ours, theirs) = (self.token(i), line.token(i));
        if ours == theirs {
            return Compare::Same;
        }
        if self.masked[i] || line.tokens[i].variable {
            return Compare::OtherValue;
        }
        if words_differ(ours, theirs) {
            Compare::OtherWord
        } else {
            Compare::Same
        }
    }

    /// Generalizes the positions where `line` differs; returns whether the text changed.
    fn absorb(&mut self, line: &MaskedLine) -> bool {
        let mut changed = false;
        for i in 0..self.ranges.len() {
            if !self.wild[i] && self.compare(i, line) != Compare::Same {
                self.wild[i] = true;
                changed = true;
            }
        }
        if changed {
            let mut text = String::with_capacity(self.text.len());
            let mut ranges = Vec::with_capacity(self.ranges.len());
            for i in 0..self.ranges.len() {
                if i > 0 {
                    text.push(' ');
                }
                let start = text.len() as u32;
                if self.wild[i] {
                    text.push_str(WILDCARD);
                } else {
                    let (s, e) = self.ranges[i];
                    text.push_str(&self.text[s as usize..e as usize]);
                }
                ranges.push((start, text.len() as u32));
            }
            self.text = text;
            self.ranges = ranges;
        }
        changed
    }
}

/// Online log template miner; see the module docs.
#[derive(Debug)]
pub struct TemplateMiner {
    config: MinerConfig,
    /// Cluster slots; evicted slots are reused.
    clusters: Vec<Cluster>,
    /// Evicted slots.
    free: Vec<u32>,
    /// Live clusters.
    live: usize,
    /// Leaf key → cluster slots, oldest first.
    leaves: FastMap<Box<[u8]>, Vec<u32>>,
    /// Tree node key (a leaf-key prefix) → live clusters under it.
    nodes: FastMap<Box<[u8]>, u32>,
    /// Tree node key → distinct non-wildcard children with live clusters.
    children: FastMap<Box<[u8]>, u32>,
    /// Template id → cluster slot.
    ids: FastMap<TemplateId, u32>,
    /// LRU list ends.
    head: u32,
    tail: u32,
    /// Lines seen; the clock of the LRU idle rule.
    clock: u64,
    /// Lines counted under the overflow template.
    overflow_count: u64,
    /// Reused per line.
    line: MaskedLine,
    key: Vec<u8>,
}

/// Separates tokens in tree keys (never occurs in UTF-8).
const KEY_SEPARATOR: u8 = 0xFF;
/// Stands for the wildcard branch in tree keys (never occurs in UTF-8).
const KEY_WILDCARD: u8 = 0xFE;

impl TemplateMiner {
    /// An empty miner.
    pub fn new(config: MinerConfig) -> Self {
        TemplateMiner {
            config,
            clusters: Vec::new(),
            free: Vec::new(),
            live: 0,
            leaves: fast_map(),
            nodes: fast_map(),
            children: fast_map(),
            ids: fast_map(),
            head: NIL,
            tail: NIL,
            clock: 0,
            overflow_count: 0,
            line: MaskedLine::default(),
            key: Vec::new(),
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &MinerConfig {
        &self.config
    }

    /// Number of live templates (the overflow template not included).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no template has been mined yet (or all were evicted).
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Lines counted under [`OVERFLOW_TEMPLATE`] so far.
    pub fn overflow_count(&self) -> u64 {
        self.overflow_count
    }

    /// Live templates, oldest slot first.
    pub fn templates(&self) -> impl Iterator<Item = TemplateInfo<'_>> {
        self.clusters
            .iter()
            .filter(|c| c.live)
            .map(|c| TemplateInfo {
                id: c.id,
                template: &c.text,
                count: c.count,
            })
    }

    /// Current text of template `id`, if it is live (or is the overflow template).
    pub fn template(&self, id: TemplateId) -> Option<&str> {
        if id == OVERFLOW_TEMPLATE_ID {
            return Some(OVERFLOW_TEMPLATE);
        }
        self.ids
            .get(&id)
            .map(|&slot| self.clusters[slot as usize].text.as_str())
    }

    /// Mines one line: finds or creates its template and counts it.
    pub fn add(&mut self, line: &str) -> TemplateMatch<'_> {
        self.clock += 1;
        mask_line(
            line,
            self.config.max_tokens,
            self.config.max_token_len,
            &mut self.line,
        );
        self.leaf_key();
        let best = self.best_match();
        if let Some(slot) = best {
            let clock = self.clock;
            let cluster = &mut self.clusters[slot as usize];
            cluster.absorb(&self.line);
            cluster.count += 1;
            cluster.last_used = clock;
            self.touch(slot);
            let cluster = &self.clusters[slot as usize];
            return TemplateMatch {
                id: cluster.id,
                template: &cluster.text,
                is_new: false,
                overflow: false,
            };
        }
        match self.create() {
            Some(slot) => {
                let cluster = &self.clusters[slot as usize];
                TemplateMatch {
                    id: cluster.id,
                    template: &cluster.text,
                    is_new: true,
                    overflow: false,
                }
            }
            None => {
                self.overflow_count += 1;
                TemplateMatch {
                    id: OVERFLOW_TEMPLATE_ID,
                    template: OVERFLOW_TEMPLATE,
                    is_new: false,
                    overflow: true,
                }
            }
        }
    }

    /// Builds the leaf key of the masked line into `self.key`.
    fn leaf_key(&mut self) {
        self.key.clear();
        let n = self.line.tokens.len();
        self.key
            .extend_from_slice(&(n.min(u16::MAX as usize) as u16).to_le_bytes());
        let prefix = self.config.depth.saturating_sub(2).min(n);
        for i in 0..prefix {
            self.key.push(KEY_SEPARATOR);
            let parent_len = self.key.len() - 1;
            let token = self.line.tokens[i];
            if !token.variable {
                let bytes = self.line.token(i);
                self.key.extend_from_slice(bytes);
                let exists = self.nodes.contains_key(self.key.as_slice());
                if exists
                    || self
                        .children
                        .get(&self.key[..parent_len])
                        .is_none_or(|&c| (c as usize) < self.config.max_children)
                {
                    continue;
                }
                self.key.truncate(parent_len + 1);
            }
            self.key.push(KEY_WILDCARD);
        }
    }

    /// The most similar cluster of the line's leaf at or above the threshold without a
    /// differing word; failing that, the most similar one with differing words if at least
    /// `word_variants` clusters qualify but for their words. The oldest wins a tie.
    fn best_match(&self) -> Option<u32> {
        let slots = self.leaves.get(self.key.as_slice())?;
        let mut best: Option<(u32, f64)> = None;
        let mut best_variant: Option<(u32, f64)> = None;
        let mut variants = 0usize;
        for &slot in slots {
            let threshold = self.config.similarity_threshold;
            let Some((sim, word_conflict)) =
                self.clusters[slot as usize].similarity(&self.line, threshold)
            else {
                continue;
            };
            let best = if word_conflict {
                variants += 1;
                &mut best_variant
            } else {
                &mut best
            };
            if best.is_none_or(|(_, b)| sim > b) {
                *best = Some((slot, sim));
            }
        }
        best.or(best_variant.filter(|_| variants >= self.config.word_variants))
            .map(|(slot, _)| slot)
    }

    /// Creates a cluster from the current line in the current leaf, evicting the least
    /// recently matched one if the miner is full and it is idle enough; `None` means the
    /// line overflows.
    fn create(&mut self) -> Option<u32> {
        if self.live >= self.config.max_templates {
            let tail = self.tail;
            if tail == NIL
                || self.clock - self.clusters[tail as usize].last_used < self.config.min_idle_lines
            {
                return None;
            }
            self.evict(tail);
        }
        let mut text = String::with_capacity(self.line.bytes.len() + self.line.tokens.len());
        let mut ranges = Vec::with_capacity(self.line.tokens.len());
        for i in 0..self.line.tokens.len() {
            if i > 0 {
                text.push(' ');
            }
            let start = text.len() as u32;
            text.push_str(&String::from_utf8_lossy(self.line.token(i)));
            ranges.push((start, text.len() as u32));
        }
        let id = self.fresh_id(&text);
        let cluster = Cluster {
            id,
            wild: vec![false; ranges.len()],
            masked: self.line.tokens.iter().map(|t| t.variable).collect(),
            text,
            ranges,
            leaf: self.key.clone().into_boxed_slice(),
            count: 1,
            last_used: self.clock,
            prev: NIL,
            next: NIL,
            live: true,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.clusters[slot as usize] = cluster;
                slot
            }
            None => {
                self.clusters.push(cluster);
                (self.clusters.len() - 1) as u32
            }
        };
        self.ids.insert(id, slot);
        self.live += 1;
        self.link_front(slot);
        self.leaves
            .entry(self.key.clone().into_boxed_slice())
            .or_default()
            .push(slot);
        self.count_nodes(slot, true);
        Some(slot)
    }

    /// Hash of the template text, salted until it is unused (and not the overflow id).
    fn fresh_id(&self, text: &str) -> TemplateId {
        let mut seed = 0u64;
        loop {
            let id = TemplateId(xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), seed));
            if id != OVERFLOW_TEMPLATE_ID && !self.ids.contains_key(&id) {
                return id;
            }
            seed += 1;
        }
    }

    /// Removes a cluster from the tree, the id map and the LRU list; frees its slot.
    fn evict(&mut self, slot: u32) {
        self.unlink(slot);
        self.count_nodes(slot, false);
        let cluster = &mut self.clusters[slot as usize];
        cluster.live = false;
        let leaf = std::mem::take(&mut cluster.leaf);
        let id = cluster.id;
        cluster.text = String::new();
        cluster.ranges = Vec::new();
        cluster.wild = Vec::new();
        cluster.masked = Vec::new();
        self.ids.remove(&id);
        if let Some(slots) = self.leaves.get_mut(&leaf) {
            slots.retain(|&s| s != slot);
            if slots.is_empty() {
                self.leaves.remove(&leaf);
            }
        }
        self.free.push(slot);
        self.live -= 1;
    }

    /// Adds (or removes) one cluster to the counts of every tree node on its leaf's path,
    /// keeping the per-node child counts that enforce `max_children`.
    fn count_nodes(&mut self, slot: u32, add: bool) {
        let leaf = self.clusters[slot as usize].leaf.clone();
        // Skip the two bytes of the token count, which may hold any value.
        let separators: Vec<usize> = leaf
            .iter()
            .enumerate()
            .skip(2)
            .filter(|&(_, &b)| b == KEY_SEPARATOR)
            .map(|(i, _)| i)
            .collect();
        for (k, &sep) in separators.iter().enumerate() {
            let end = separators.get(k + 1).copied().unwrap_or(leaf.len());
            let node = &leaf[..end];
            let parent = &leaf[..sep];
            let wildcard = end == sep + 2 && leaf[sep + 1] == KEY_WILDCARD;
            let count = self.nodes.entry(node.into()).or_insert(0);
            let before = *count;
            if add {
                *count += 1;
            } else {
                *count -= 1;
            }
            let after = *count;
            if after == 0 {
                self.nodes.remove(node);
            }
            if wildcard {
                continue;
            }
            if before == 0 && after == 1 {
                *self.children.entry(parent.into()).or_insert(0) += 1;
            } else if before == 1
                && after == 0
                && let Some(c) = self.children.get_mut(parent)
            {
                *c -= 1;
                if *c == 0 {
                    self.children.remove(parent);
                }
            }
        }
    }

    /// Moves a live cluster to the front of the LRU list.
    fn touch(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.link_front(slot);
        }
    }

    fn link_front(&mut self, slot: u32) {
        let old_head = self.head;
        {
            let c = &mut self.clusters[slot as usize];
            c.prev = NIL;
            c.next = old_head;
        }
        if old_head != NIL {
            self.clusters[old_head as usize].prev = slot;
        } else {
            self.tail = slot;
        }
        self.head = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let c = &self.clusters[slot as usize];
            (c.prev, c.next)
        };
        if prev != NIL {
            self.clusters[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.clusters[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        let c = &mut self.clusters[slot as usize];
        c.prev = NIL;
        c.next = NIL;
    }
}

impl Default for TemplateMiner {
    fn default() -> Self {
        TemplateMiner::new(MinerConfig::default())
    }
}
