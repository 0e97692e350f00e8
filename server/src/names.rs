//! The word index: the names of the registry's files and their FIND words
//! ([`crate::words`]), in memory, so that FIND is answered without SQL
//! ([`crate::index::Index::find`]).
//!
//! It holds one *record* per `files` row: the file's id, its name and the
//! index slot ([`crate::index`]) holding its registrations. Records are in
//! `files.id` order (the order FTS5 examines matches in, which
//! `MAX_FIND_EXAMINED` depends on): loaded sorted, then appended, since
//! SQLite gives a new row the largest id in use plus one. A new id that is
//! not above every present one (a hand-made file, a file id past `u32`)
//! *breaks* the index: FIND goes to SQLite until the next load.
//!
//! Layout, for memory (no allocation per name):
//! - `text`: every name, each followed by a NUL (a separator, which ends
//!   any token), in record order; a record is 12 bytes (id, where its name
//!   starts, its slot).
//! - The *base*, built at load: every distinct folded token once, as the
//!   offset in `text` of one occurrence of it (folded on the fly when
//!   compared, so the term's own bytes are not stored again), sorted in
//!   byte order (which keeps a prefix's terms together), each with its
//!   list of record numbers in one shared `postings` array, as LEB128
//!   varints of the gaps (a million `bench-file-N` names: 5 MB, not 12).
//! - The *delta*: the tokens of records appended since the base was
//!   built, in an ordered map (about 110 bytes a term before the merge
//!   existed, against about 12 in the base: BENCHMARKS.md, stop 22).
//!   Once it holds a quarter of the base's records (and at least
//!   [`MERGE_MIN`]) it is merged into the base, a linear pass that copies
//!   the base's postings and tokenizes nothing; so names added live cost
//!   what loaded ones do, with at most a quarter of them in the map.
//!
//! A removed record keeps its number (marked gone); its postings, in the
//! base or the delta, stay and are skipped. Numbers are never reused, so a
//! posting never points at a different name. The space of gone records is
//! given back at the next load.
//!
//! This module must not touch the database nor the registrations: it
//! answers which names match a FIND's words, in order; the index counts
//! their sources.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Range;

use smallvec::SmallVec;

use crate::words;

/// A record's number: its position in [`Names::recs`].
pub type RecId = u32;

/// No record (a slot whose record is not yet made).
pub const NO_REC: RecId = u32::MAX;

/// One `files` row. `id == 0` marks a gone record (SQLite never assigns
/// rowid 0 to a plain insert; a hand-made 0 breaks the index).
#[derive(Debug, Clone, Copy)]
struct Rec {
    id: u32,
    name_at: u32,
    slot: u32,
}

/// The word index; see the module doc.
#[derive(Default)]
pub struct Names {
    /// Every name, each followed by a NUL, in record order.
    text: String,
    recs: Vec<Rec>,
    /// Base terms: the offset in `text` of one occurrence of each, sorted.
    terms: Vec<u32>,
    /// The head (first 8 folded bytes) of every [`HEAD_EVERY`]th base
    /// term: the first steps of a term search stay in this small array
    /// (512 KiB for a million terms) instead of each missing the cache
    /// twice (the term's offset, then its text in the arena).
    heads: Vec<u64>,
    /// Where each base term's postings start in `postings` (one more entry
    /// than `terms`), in bytes.
    post_at: Vec<u32>,
    /// Each base term's record numbers, ascending: the first, then the
    /// gaps, each a LEB128 varint.
    postings: Vec<u8>,
    /// Records below this number have their tokens in the base.
    base_recs: usize,
    /// Terms of the records appended since the base was built.
    delta: BTreeMap<Box<str>, DeltaTerm>,
    /// Records present.
    live: usize,
    /// Why FIND cannot be answered from here (until the next load).
    broken: Option<&'static str>,
}

/// A term of the delta.
#[derive(Debug, Default)]
struct DeltaTerm {
    /// The offset in `text` of one occurrence (where the term will be in
    /// the base after a merge).
    at: u32,
    /// Its records, ascending; inline for the few a new term usually has.
    recs: SmallVec<[RecId; 4]>,
}

/// Records in the delta that start a merge, whatever the base's size: a
/// merge costs a pass over the base, so a small delta is not worth one.
pub const MERGE_MIN: usize = 1 << 16;

/// The delta is merged once it holds one record for this many in the base:
/// the merges' total work stays a few passes over the final base, and the
/// map (several times the bytes of a base term) holds at most a quarter.
pub const MERGE_FRACTION: usize = 4;

/// A FIND's word as the full-text index reads it: its tokens, in which all
/// but the last must equal consecutive tokens of the name and the last
/// must begin one (an FTS5 phrase prefix query).
pub type Phrase = Vec<String>;

impl Names {
    /// Builds the index of `files`: `(file id, slot, where its name is in
    /// `text`, its length in bytes)`, any order.
    /// Files whose id does not fit (0 or past `u32`) break it. Takes the
    /// list and its text by value: they are dropped before the tokens are
    /// sorted, which is the peak of the load's memory.
    pub fn build(mut files: Vec<(i64, u32, u32, u32)>, text: String) -> Names {
        let mut names = Names::default();
        files.sort_unstable_by_key(|&(id, ..)| id);
        if files.windows(2).any(|w| w[0].0 == w[1].0) {
            names.broken = Some("two names share a file id");
        }
        let bytes: usize = files.iter().map(|f| f.3 as usize + 1).sum();
        if u32::try_from(bytes).is_err() || u32::try_from(files.len()).is_err() {
            names.broken = Some("the names do not fit the word index");
            return names;
        }
        names.text.reserve_exact(bytes);
        names.recs.reserve_exact(files.len());
        for (id, slot, at, len) in files {
            let (at, len) = (at as usize, len as usize);
            let Some(name) = text.get(at..at + len) else {
                names.broken = Some("a name is not where the load put it");
                continue;
            };
            let Some(id) = u32::try_from(id).ok().filter(|&id| id > 0) else {
                names.broken = Some("a file id is outside 1..2^32");
                continue;
            };
            let name_at = names.text.len() as u32;
            names.text.push_str(name);
            names.text.push('\0');
            names.recs.push(Rec { id, name_at, slot });
        }
        drop(text);
        // Every token occurrence: (its first 8 folded bytes, offset, record),
        // sorted so that equal terms are together, each in record order;
        // counted first, so that the vector is made once at its size.
        let mut count = 0;
        for r in 0..names.recs.len() {
            words::for_each_token(name_in(&names.text, &names.recs, r), |_, _| count += 1);
        }
        let mut occurrences: Vec<(u64, u32, RecId)> = Vec::with_capacity(count);
        for r in 0..names.recs.len() {
            let name_at = names.recs[r].name_at;
            words::for_each_token(name_in(&names.text, &names.recs, r), |start, folded| {
                occurrences.push((head(folded), name_at + start as u32, r as RecId));
            });
        }
        names.live = names.recs.len();
        names.base_recs = names.recs.len();
        let text = &names.text;
        occurrences.sort_unstable_by(|a, b| {
            cmp_occurrence(text, (a.0, a.1), (b.0, b.1)).then(a.2.cmp(&b.2))
        });
        let mut last: Option<(u64, u32)> = None;
        let mut prev: RecId = 0;
        for &(h, at, r) in &occurrences {
            let same = last.is_some_and(|l| cmp_occurrence(text, l, (h, at)).is_eq());
            if !same {
                let Ok(start) = u32::try_from(names.postings.len()) else {
                    names.broken = Some("the postings do not fit the word index");
                    return names;
                };
                names.terms.push(at);
                names.post_at.push(start);
                last = Some((h, at));
                push_varint(&mut names.postings, r);
            } else if prev == r {
                continue; // the term twice in one name
            } else {
                push_varint(&mut names.postings, r - prev);
            }
            prev = r;
        }
        drop(occurrences);
        let Ok(end) = u32::try_from(names.postings.len()) else {
            names.broken = Some("the postings do not fit the word index");
            return names;
        };
        names.post_at.push(end);
        names.terms.shrink_to_fit();
        names.heads = names
            .terms
            .iter()
            .step_by(HEAD_EVERY)
            .map(|&at| head_at(&names.text, at))
            .collect();
        names.post_at.shrink_to_fit();
        names.postings.shrink_to_fit();
        names
    }

    /// Every present record and its slot.
    pub fn slots(&self) -> impl Iterator<Item = (RecId, u32)> + '_ {
        self.recs
            .iter()
            .enumerate()
            .filter(|(_, rec)| rec.id != 0)
            .map(|(r, rec)| (r as RecId, rec.slot))
    }

    /// Whether FIND can be answered from here (see the module doc).
    pub fn broken(&self) -> Option<&'static str> {
        self.broken
    }

    /// Records present.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Adds file `id` named `name`, whose registrations are in `slot`;
    /// returns its record number (or [`NO_REC`] once broken).
    pub fn add(&mut self, id: i64, slot: u32, name: &str) -> RecId {
        if self.broken.is_some() {
            return NO_REC;
        }
        let Some(id) = u32::try_from(id).ok().filter(|&id| id > 0) else {
            self.broken = Some("a file id is outside 1..2^32");
            return NO_REC;
        };
        // Every present record must have a smaller id (gone ones may not).
        if let Some(last) = self.recs.iter().rev().find(|r| r.id != 0) {
            if last.id >= id {
                self.broken = Some("a new file id is not above the ones in use");
                return NO_REC;
            }
        }
        let (Ok(r), Ok(name_at)) = (
            RecId::try_from(self.recs.len()),
            u32::try_from(self.text.len()),
        ) else {
            self.broken = Some("the names do not fit the word index");
            return NO_REC;
        };
        if r == NO_REC || u32::try_from(self.text.len() + name.len() + 1).is_err() {
            self.broken = Some("the names do not fit the word index");
            return NO_REC;
        }
        self.text.push_str(name);
        self.text.push('\0');
        self.recs.push(Rec { id, name_at, slot });
        self.live += 1;
        let delta = &mut self.delta;
        words::for_each_token(name, |start, folded| {
            let term = match delta.get_mut(folded) {
                Some(term) => term,
                None => delta.entry(folded.into()).or_insert(DeltaTerm {
                    at: name_at + start as u32,
                    recs: SmallVec::new(),
                }),
            };
            if term.recs.last() != Some(&r) {
                term.recs.push(r);
            }
        });
        let in_delta = self.recs.len() - self.base_recs;
        if in_delta >= MERGE_MIN.max(self.base_recs / MERGE_FRACTION) {
            self.merge_delta();
        }
        r
    }

    /// Merges the delta into the base: both are sorted by term, and every
    /// delta record comes after every base record, so a term in both gets
    /// the delta's records appended to its postings. Runs on the writer,
    /// under the word index's write lock (FIND waits): 65 ms for a million
    /// base terms and 200,000 delta ones, where building the same 1.2M from
    /// scratch takes 420 ms (BENCHMARKS.md, "The word index's delta merged
    /// into the base").
    fn merge_delta(&mut self) {
        let delta = std::mem::take(&mut self.delta);
        let n = self.terms.len() + delta.len();
        let in_delta: usize = delta.values().map(|term| term.recs.len()).sum();
        let mut terms: Vec<u32> = Vec::with_capacity(n);
        let mut post_at: Vec<u32> = Vec::with_capacity(n + 1);
        let mut postings: Vec<u8> = Vec::with_capacity(self.postings.len() + 2 * in_delta);
        let text = &self.text;
        let mut fresh = delta.into_iter().peekable();
        let mut ok = true;
        // Starts a term in the new base; `false` once the postings no
        // longer fit the u32 offsets.
        let start_term =
            |terms: &mut Vec<u32>, post_at: &mut Vec<u32>, len: usize, at| match u32::try_from(len)
            {
                Ok(start) => {
                    terms.push(at);
                    post_at.push(start);
                    true
                }
                Err(_) => false,
            };
        for t in 0..self.terms.len() {
            let at = self.terms[t];
            while let Some((_, term)) =
                fresh.next_if(|(k, _)| words::cmp_token(text, at as usize, k).is_gt())
            {
                ok &= start_term(&mut terms, &mut post_at, postings.len(), term.at);
                ok &= push_gaps(&mut postings, None, &term.recs);
            }
            ok &= start_term(&mut terms, &mut post_at, postings.len(), at);
            postings.extend_from_slice(
                self.postings
                    .get(self.post_at(t)..self.post_at(t + 1))
                    .unwrap_or(&[]),
            );
            if let Some((_, term)) =
                fresh.next_if(|(k, _)| words::cmp_token(text, at as usize, k).is_eq())
            {
                let last = self.posts(t).last();
                ok &= push_gaps(&mut postings, last, &term.recs);
            }
        }
        for (_, term) in fresh {
            ok &= start_term(&mut terms, &mut post_at, postings.len(), term.at);
            ok &= push_gaps(&mut postings, None, &term.recs);
        }
        match u32::try_from(postings.len()) {
            Ok(end) => post_at.push(end),
            Err(_) => ok = false,
        }
        if !ok {
            self.broken = Some("the postings do not fit the word index");
            return;
        }
        self.heads = terms
            .iter()
            .step_by(HEAD_EVERY)
            .map(|&at| head_at(&self.text, at))
            .collect();
        self.terms = terms;
        self.post_at = post_at;
        // Sized by an estimate (a new term's first posting is an absolute
        // number, up to 5 bytes): no slack kept for the index's life.
        postings.shrink_to_fit();
        self.postings = postings;
        self.base_recs = self.recs.len();
    }

    /// Removes record `r` (its file is gone from the database).
    pub fn remove(&mut self, r: RecId) {
        let Some(rec) = self.recs.get(r as usize).copied() else {
            return;
        };
        if rec.id == 0 {
            return;
        }
        // Its postings, in the base or the delta, are skipped from now on.
        // Taking it out of the delta's lists would cost a scan of each of
        // its terms' lists (a common word's holds every name added since
        // the load) on the writer thread, for every name that goes.
        self.recs[r as usize].id = 0;
        self.live -= 1;
    }

    /// The file id, name and slot of record `r`, if present.
    pub fn get(&self, r: RecId) -> Option<(i64, &str, u32)> {
        let rec = self.recs.get(r as usize)?;
        (rec.id != 0).then(|| {
            (
                i64::from(rec.id),
                name_in(&self.text, &self.recs, r as usize),
                rec.slot,
            )
        })
    }

    /// The name of a present record `r` (empty if gone).
    pub fn name(&self, r: RecId) -> &str {
        self.get(r).map_or("", |(_, name, _)| name)
    }

    /// The records whose names match every phrase, in record (file id)
    /// order, at most `limit`: what `files_fts MATCH '"w1"* AND "w2"*'
    /// LIMIT limit` returns. A phrase without tokens matches nothing.
    pub fn matching(&self, phrases: &[Phrase], limit: usize) -> Vec<RecId> {
        let mut out = Vec::new();
        if phrases.is_empty() || phrases.iter().any(Vec::is_empty) || limit == 0 {
            return out;
        }
        // The driver: the token whose candidates are fewest (bytes of base
        // postings, at least one a record, and delta records; gone records
        // included). All but a phrase's last token
        // must match a term exactly; the last, as a prefix.
        let mut driver: Option<(usize, Range<usize>, &str, bool)> = None;
        for phrase in phrases {
            for (i, token) in phrase.iter().enumerate() {
                let prefix = i + 1 == phrase.len();
                let range = self.base_range(token, prefix);
                let cost = self.post_bytes(range.start, range.end)
                    + self
                        .delta_lists(token, prefix)
                        .map(|(_, l)| l.len())
                        .sum::<usize>();
                if driver.as_ref().is_none_or(|d| cost < d.0) {
                    driver = Some((cost, range, token, prefix));
                }
            }
        }
        let Some((cost, range, token, prefix)) = driver else {
            return out;
        };
        // One phrase of one token: every candidate matches.
        let obvious = phrases.len() == 1 && phrases[0].len() == 1;
        let mut tokens = Tokens::default();
        let mut take = |r: RecId, out: &mut Vec<RecId>| -> bool {
            let Some(rec) = self.recs.get(r as usize) else {
                return false;
            };
            if rec.id == 0 {
                return false;
            }
            if !obvious {
                tokens.read(name_in(&self.text, &self.recs, r as usize));
                if !phrases.iter().all(|p| tokens.has_phrase(p)) {
                    return false;
                }
            }
            out.push(r);
            out.len() == limit
        };
        let mut delta = self.delta_lists(token, prefix).peekable();
        if range.len() <= 1 && delta.peek().is_none() {
            // One sorted list: no gathering.
            let list = range.start..range.end;
            for t in list {
                for r in self.posts(t) {
                    if take(r, &mut out) {
                        return out;
                    }
                }
            }
            return out;
        }
        let mut all: Vec<RecId> = Vec::with_capacity(cost);
        for t in range {
            all.extend(self.posts(t));
        }
        for (_, list) in delta {
            all.extend_from_slice(list);
        }
        all.sort_unstable();
        all.dedup();
        for r in all {
            if take(r, &mut out) {
                break;
            }
        }
        out
    }

    /// Where base term `t`'s postings start (0 past the end: an empty
    /// index, such as the one a load leaves while it runs, has no
    /// `post_at` at all, and a FIND that began before the load may read it).
    fn post_at(&self, t: usize) -> usize {
        self.post_at.get(t).map_or(0, |&at| at as usize)
    }

    /// Bytes of postings of base terms `from..to`.
    fn post_bytes(&self, from: usize, to: usize) -> usize {
        self.post_at(to).saturating_sub(self.post_at(from))
    }

    /// The record numbers of base term `t`, ascending.
    fn posts(&self, t: usize) -> impl Iterator<Item = RecId> + '_ {
        let mut bytes = self
            .postings
            .get(self.post_at(t)..self.post_at(t + 1))
            .unwrap_or(&[])
            .iter();
        let mut r: RecId = 0;
        std::iter::from_fn(move || {
            let mut gap: u32 = 0;
            let mut shift = 0;
            loop {
                let b = *bytes.next()?;
                gap |= u32::from(b & 0x7F).checked_shl(shift).unwrap_or(0);
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            r = r.wrapping_add(gap);
            Some(r)
        })
    }

    /// The base terms equal to `token` (or, if `prefix`, beginning with it).
    fn base_range(&self, token: &str, prefix: bool) -> Range<usize> {
        let text = &self.text;
        // The first term not below `token` is after every sampled term
        // whose head is below the token's, and not after the first sampled
        // term whose head is above it.
        let h = head(token);
        let below = self.heads.partition_point(|&x| x < h);
        let not_above = self.heads.partition_point(|&x| x <= h);
        let lo = below.saturating_sub(1) * HEAD_EVERY;
        let hi = (not_above * HEAD_EVERY).min(self.terms.len());
        let start = lo
            + self.terms[lo..hi]
                .partition_point(|&at| words::cmp_token(text, at as usize, token).is_lt());
        let matches = |t: usize| {
            self.terms.get(t).is_some_and(|&at| {
                if prefix {
                    words::token_starts_with(text, at as usize, token)
                } else {
                    words::cmp_token(text, at as usize, token).is_eq()
                }
            })
        };
        if !matches(start) {
            return start..start;
        }
        if !prefix {
            return start..start + 1; // terms are distinct
        }
        // Galloping: a prefix's terms are usually few, and near `start`.
        let mut step = 1;
        while matches(start + step) {
            step *= 2;
        }
        let from = start + step / 2 + 1;
        let to = (start + step).min(self.terms.len());
        let end = from
            + self.terms[from.min(to)..to]
                .partition_point(|&at| words::token_starts_with(text, at as usize, token));
        start..end
    }

    /// The delta's terms equal to `token` (or beginning with it).
    fn delta_lists<'s>(
        &'s self,
        token: &'s str,
        prefix: bool,
    ) -> impl Iterator<Item = (&'s str, &'s [RecId])> + 's {
        self.delta
            .range::<str, _>((std::ops::Bound::Included(token), std::ops::Bound::Unbounded))
            .map(|(k, v)| (k.as_ref(), v.recs.as_slice()))
            .take_while(move |(k, _)| {
                if prefix {
                    k.starts_with(token)
                } else {
                    *k == token
                }
            })
    }
}

/// One base term in this many has its head in [`Names::heads`].
const HEAD_EVERY: usize = 16;

/// The head of the folded token at offset `at` of `text`.
fn head_at(text: &str, at: u32) -> u64 {
    let mut b = [0u8; 8];
    let mut n = 0;
    let mut buf = [0u8; 4];
    'fill: for c in words::token_at(text, at as usize) {
        for &byte in c.encode_utf8(&mut buf).as_bytes() {
            if n == 8 {
                break 'fill;
            }
            b[n] = byte;
            n += 1;
        }
    }
    u64::from_be_bytes(b)
}

/// Appends `recs` (ascending) as postings after the term's last record
/// `prev`: gaps, the first one from `prev`, or absolute for a new term
/// (`None`). `false` when they are not ascending (never: delta records
/// follow the base's).
fn push_gaps(out: &mut Vec<u8>, mut prev: Option<RecId>, recs: &[RecId]) -> bool {
    for &r in recs {
        let gap = match prev {
            None => r,
            Some(p) if r > p => r - p,
            Some(_) => return false,
        };
        push_varint(out, gap);
        prev = Some(r);
    }
    true
}

/// Appends `n` as a LEB128 varint (7 bits a byte, low first).
fn push_varint(out: &mut Vec<u8>, mut n: u32) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The name of record `r` (its text up to the NUL after it).
fn name_in<'t>(text: &'t str, recs: &[Rec], r: usize) -> &'t str {
    let start = recs[r].name_at as usize;
    let end = recs
        .get(r + 1)
        .map_or(text.len(), |next| next.name_at as usize)
        .saturating_sub(1);
    text.get(start..end).unwrap_or("")
}

/// The first 8 bytes of a folded token as a number (zero-padded; a folded
/// token has no NUL, so the padding sorts first as a shorter string does).
fn head(folded: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = folded.len().min(8);
    b[..n].copy_from_slice(&folded.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

/// Compares two token occurrences `(head, offset in text)`: by their
/// heads, and only when those are equal and full (8 bytes: the tokens may
/// go on) by folding the tokens again. A head with a zero last byte is a
/// whole token shorter than 8 bytes. (Folding every comparison made the
/// load of a million names 40 times slower: most are `bench`/`file`.)
fn cmp_occurrence(text: &str, a: (u64, u32), b: (u64, u32)) -> Ordering {
    match a.0.cmp(&b.0) {
        Ordering::Equal if a.0 & 0xFF != 0 => {
            words::token_at(text, a.1 as usize).cmp(words::token_at(text, b.1 as usize))
        }
        other => other,
    }
}

/// The folded tokens of one name, reused from name to name.
#[derive(Default)]
struct Tokens {
    folded: String,
    spans: Vec<Range<usize>>,
}

impl Tokens {
    fn read(&mut self, name: &str) {
        self.folded.clear();
        self.spans.clear();
        let Tokens { folded, spans } = self;
        words::for_each_token(name, |_, t| {
            let start = folded.len();
            folded.push_str(t);
            spans.push(start..folded.len());
        });
    }

    fn token(&self, i: usize) -> &str {
        &self.folded[self.spans[i].clone()]
    }

    /// Whether the phrase occurs: its tokens equal consecutive tokens, the
    /// last a prefix of its token.
    fn has_phrase(&self, phrase: &[String]) -> bool {
        let Some((last, exact)) = phrase.split_last() else {
            return false;
        };
        let n = self.spans.len();
        if n < phrase.len() {
            return false;
        }
        (0..=n - phrase.len()).any(|i| {
            exact
                .iter()
                .enumerate()
                .all(|(j, t)| self.token(i + j) == t)
                && self.token(i + exact.len()).starts_with(last.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phrases(words: &[&str]) -> Vec<Phrase> {
        words.iter().map(|w| words::tokens(w)).collect()
    }

    /// [`Names::build`] from `(id, slot, name)`.
    fn build<'a>(files: impl IntoIterator<Item = (i64, u32, &'a str)>) -> Names {
        let mut text = String::new();
        let mut list = Vec::new();
        for (id, slot, name) in files {
            list.push((id, slot, text.len() as u32, name.len() as u32));
            text.push_str(name);
        }
        Names::build(list, text)
    }

    /// What a FIND that began before a load may read: nothing, no panic.
    #[test]
    fn an_empty_index_matches_nothing() {
        let n = Names::default();
        assert!(n.matching(&phrases(&["a", "b-c"]), 10).is_empty());
        assert_eq!(n.get(0), None);
    }

    /// Terms longer than the 8-byte head the load sorts by first.
    #[test]
    fn long_terms_with_one_head_are_told_apart() {
        let names = [
            "abcdefghij x",
            "ABCDEFGHIK",
            "abcdefgh",
            "abcdefghij-abcdefgh",
            "abcdefg",
        ];
        let n = build(names.iter().enumerate().map(|(i, s)| (i as i64 + 1, 0, *s)));
        assert_eq!(n.matching(&phrases(&["abcdefghij"]), 10), [0, 3]);
        assert_eq!(n.matching(&phrases(&["abcdefghi"]), 10), [0, 1, 3]);
        assert_eq!(n.matching(&phrases(&["abcdefgh"]), 10), [0, 1, 2, 3]);
        assert_eq!(n.matching(&phrases(&["abcdefg"]), 10), [0, 1, 2, 3, 4]);
        assert_eq!(n.matching(&phrases(&["ABCDEFGHIK"]), 10), [1]);
        assert_eq!(n.terms.len(), 5, "one term each: {:?}", n.terms);
    }

    /// The base's search (sampled heads, galloping) against a scan of
    /// every name, over terms that share long heads and short ones.
    #[test]
    fn term_search_equals_a_scan() {
        let mut all: Vec<String> = (0..300)
            .map(|i| format!("abcdefgh{i} x{}", i % 40))
            .collect();
        all.extend(["abcdefg", "abcdefgi", "abcdefgh", "b", "ab", "a"].map(String::from));
        all.extend((0..100).map(|i| format!("{i}")));
        let n = build(
            all.iter()
                .enumerate()
                .map(|(i, s)| (i as i64 + 1, 0, s.as_str())),
        );
        assert!(n.heads.len() > 10);
        let mut tokens = Tokens::default();
        for q in [
            "a",
            "ab",
            "abc",
            "abcdefg",
            "abcdefgh",
            "abcdefgh1",
            "abcdefgh29",
            "abcdefgh299",
            "abcdefgh3",
            "abcdefghz",
            "abcdefgi",
            "b",
            "c",
            "x1",
            "x39",
            "0",
            "1",
            "9",
            "99",
            "abcdefgh1 x1",
            "z",
        ] {
            let p = phrases(&[q]);
            let scan: Vec<RecId> = (0..all.len() as RecId)
                .filter(|&r| {
                    tokens.read(n.name(r));
                    tokens.has_phrase(&p[0])
                })
                .collect();
            assert_eq!(n.matching(&p, usize::MAX), scan, "{q:?}");
        }
    }

    #[test]
    fn base_and_delta_prefixes_phrases_and_removal() {
        let mut n = build([
            (3, 30, "Foo-Bar baz"),
            (1, 10, "foo qux"),
            (2, 20, "FOOD bar"),
        ]);
        assert_eq!(n.matching(&phrases(&["foo"]), 10), [0, 1, 2]);
        assert_eq!(
            n.matching(&phrases(&["foo-ba"]), 10),
            [2],
            "a phrase prefix"
        );
        assert_eq!(n.matching(&phrases(&["bar", "foo"]), 10), [1, 2]);
        assert_eq!(
            n.matching(&phrases(&["foo"]), 2),
            [0, 1],
            "the limit, in id order"
        );
        assert_eq!(n.get(2), Some((3, "Foo-Bar baz", 30)));
        let r = n.add(4, 40, "foo bard");
        assert_eq!(r, 3);
        assert_eq!(n.matching(&phrases(&["bar", "foo"]), 10), [1, 2, 3]);
        n.remove(1);
        n.remove(3);
        assert_eq!(n.matching(&phrases(&["bar", "foo"]), 10), [2]);
        assert_eq!(n.matching(&phrases(&["-"]), 10), Vec::<RecId>::new());
        assert_eq!(n.len(), 2);
        assert_eq!(
            n.add(3, 50, "x"),
            NO_REC,
            "an id below one in use breaks it"
        );
        assert!(n.broken().is_some());
    }

    /// The present records whose names match every phrase of `q`, by a
    /// scan of the names: what [`Names::matching`] must answer.
    fn scan(n: &Names, q: &[Phrase]) -> Vec<RecId> {
        let mut tokens = Tokens::default();
        (0..n.recs.len() as RecId)
            .filter(|&r| {
                n.get(r).is_some() && {
                    tokens.read(n.name(r));
                    q.iter().all(|p| tokens.has_phrase(p))
                }
            })
            .collect()
    }

    /// The answers of every query in `queries` by a scan of the names.
    fn scan_answers(n: &Names, queries: &[&str]) -> Vec<Vec<RecId>> {
        queries
            .iter()
            .map(|q| scan(n, &phrases(&q.split(' ').collect::<Vec<_>>())))
            .collect()
    }

    fn answers(n: &Names, queries: &[&str]) -> Vec<Vec<RecId>> {
        queries
            .iter()
            .map(|q| n.matching(&phrases(&q.split(' ').collect::<Vec<_>>()), usize::MAX))
            .collect()
    }

    #[test]
    fn merging_the_delta_changes_no_answer() {
        // A base; then names that share its terms, extend them, come
        // before and after them in term order; removals on both sides.
        let mut n =
            build((0..50).map(|i| (i + 1, 0, ["mid song", "mid", "zz top"][i as usize % 3])));
        let mut id = 100;
        let mut add = |n: &mut Names, name: &str| {
            id += 1;
            n.add(id, 0, name)
        };
        for i in 0..40 {
            add(&mut n, &format!("aa{i} mid"));
            add(&mut n, &format!("middle {i}"));
            add(&mut n, "zz top");
            add(&mut n, &format!("zzz{} song", i % 7));
        }
        n.remove(3);
        n.remove(60);
        n.remove(61);
        let queries = [
            "mid", "midd", "m", "song", "zz", "zz top", "top zz", "aa1", "aa", "zzz3", "1",
            "middle 1", "song mid", "q",
        ];
        let before = answers(&n, &queries);
        assert_eq!(before, scan_answers(&n, &queries));
        assert!(!n.delta.is_empty());
        n.merge_delta();
        assert!(n.delta.is_empty() && n.broken().is_none());
        assert_eq!(n.base_recs, n.recs.len());
        assert_eq!(answers(&n, &queries), before, "the merge changed an answer");
        // A new delta over the merged base, merged again.
        for i in 0..10 {
            add(&mut n, &format!("mid aa{i}"));
        }
        n.remove(5);
        let again = answers(&n, &queries);
        assert_eq!(again, scan_answers(&n, &queries));
        n.merge_delta();
        assert_eq!(answers(&n, &queries), again);
    }

    #[test]
    fn a_delta_of_merge_min_records_is_merged_and_the_index_starts_empty() {
        let mut n = Names::default();
        for i in 0..MERGE_MIN as i64 {
            n.add(i + 1, 0, &format!("file {i}"));
        }
        assert!(n.delta.is_empty(), "merged once it held MERGE_MIN records");
        assert_eq!(n.base_recs, MERGE_MIN);
        n.add(MERGE_MIN as i64 + 1, 0, "file last");
        let queries = ["file", "65535", "6553", "last", "file last"];
        assert_eq!(answers(&n, &queries), scan_answers(&n, &queries));
        assert_eq!(
            n.matching(&phrases(&["file"]), usize::MAX).len(),
            MERGE_MIN + 1
        );
    }

    mod merge_property {
        use super::*;
        use proptest::prelude::*;

        /// Words over letters that fold (É, ß), a combining mark, CJK,
        /// Deseret, U+FFFF: orders by bytes and by characters must agree.
        fn word() -> impl Strategy<Value = String> {
            let letters = prop_oneof![
                Just('a'),
                Just('b'),
                Just('É'),
                Just('é'),
                Just('ß'),
                Just('日'),
                Just('\u{301}'),
                Just('Z'),
                Just('\u{10400}'),
                Just('\u{FFFF}'),
            ];
            proptest::collection::vec(letters, 1..12).prop_map(|v| v.into_iter().collect())
        }

        fn name() -> impl Strategy<Value = String> {
            proptest::collection::vec(word(), 1..4).prop_map(|v| v.join(" "))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// A base, a delta, removals, a merge, a second delta and a
            /// second merge: every query (and every prefix of every token)
            /// answers as a scan of the names, and the merged terms are
            /// strictly increasing.
            #[test]
            fn merges_keep_every_answer(
                base in proptest::collection::vec(name(), 0..30),
                more in proptest::collection::vec(name(), 0..30),
                later in proptest::collection::vec(name(), 0..10),
                gone in proptest::collection::vec(0u32..70, 0..10),
                words in proptest::collection::vec(proptest::collection::vec(word(), 1..3), 1..12),
            ) {
                let mut n = build(base.iter().enumerate().map(|(i, nm)| (i as i64 + 1, 0, nm.as_str())));
                let mut id = 1000;
                for nm in &more {
                    id += 1;
                    n.add(id, 0, nm);
                }
                for &g in &gone {
                    n.remove(g);
                }
                let mut queries: Vec<Vec<Phrase>> = words
                    .iter()
                    .map(|q| phrases(&q.iter().map(String::as_str).collect::<Vec<_>>()))
                    .collect();
                for nm in base.iter().chain(&more) {
                    for t in words::tokens(nm) {
                        for (i, _) in t.char_indices().skip(1) {
                            queries.push(vec![vec![t[..i].to_string()]]);
                        }
                        queries.push(vec![vec![t.clone()]]);
                    }
                }
                let answers = |n: &Names| -> Vec<Vec<RecId>> {
                    queries.iter().map(|q| n.matching(q, usize::MAX)).collect()
                };
                let scans = |n: &Names| -> Vec<Vec<RecId>> {
                    queries.iter().map(|q| scan(n, q)).collect()
                };
                let before = answers(&n);
                prop_assert_eq!(&before, &scans(&n));
                n.merge_delta();
                prop_assert!(n.broken().is_none());
                prop_assert_eq!(&answers(&n), &before);
                for nm in &later {
                    id += 1;
                    n.add(id, 0, nm);
                }
                n.remove(3);
                let expected = scans(&n);
                prop_assert_eq!(&answers(&n), &expected);
                n.merge_delta();
                prop_assert_eq!(&answers(&n), &expected);
                for w in n.terms.windows(2) {
                    let a: String = words::token_at(&n.text, w[0] as usize).collect();
                    let b: String = words::token_at(&n.text, w[1] as usize).collect();
                    prop_assert!(a < b, "{:?} !< {:?}", a, b);
                }
            }
        }
    }
}
