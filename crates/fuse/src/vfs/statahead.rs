//! Statahead: a directory whose entries are looked up one after another (`ls -l`, `find`,
//! `du`, `rsync`, a program that stats its inputs) is read ahead, entries with their
//! attributes, a page at a time, and the next lookups in it are answered from what came back.
//!
//! Without it each of those lookups is a metadata round trip of its own; with it a page of
//! 512 costs about as much as two of them.
//!
//! What was read is served for the attribute TTL counted from the moment the first page was
//! asked for, and the kernel is told to keep an answer only for what is left of that TTL. So
//! another client's change shows here within one TTL, as it does through the kernel's own
//! attribute cache. This mount's own changes show at once: each marks what it changed when
//! it finishes, and nothing read before that mark is served:
//! - a change of an inode's attributes, data, links or extended attributes marks the inode;
//! - a change of a name marks its directory, whose entries then all go to meta;
//! - an unlink or a rename can change an inode this mount cannot name (the other links of
//!   the file that lost a name), so it marks everything.
//!
//! A name not among the entries read is left to meta (or to `vfs::names`, which learns the
//! directory's names when a read from its first name reached its end).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ember_client::{EmberClient, Retry};
use ember_proto::meta::{Attr, ReadDirReq};

/// Lookups of a directory that meta had to answer within one TTL before it is read ahead.
const TRIGGER_MISSES: u32 = 4;
/// Directories read ahead at once; the oldest goes first.
const MAX_DIRS: usize = 16;
/// Entries read ahead per directory: a bigger directory is read in windows of this many,
/// each starting where the lookups have got to.
const MAX_ENTRIES: usize = 4096;
/// Marks kept before the ones too old to matter are dropped.
const MAX_MARKS: usize = 4096;

pub(super) struct Statahead {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    windows: HashMap<u64, Window>,
    misses: HashMap<u64, Misses>,
    /// When this mount's latest change of each inode finished.
    marks: HashMap<u64, Instant>,
    /// When its latest change that may have touched an inode it cannot name finished.
    marked_all: Option<Instant>,
    next_id: u64,
}

/// The entries of one directory read from just after `after` (the start if empty).
struct Window {
    id: u64,
    /// When the first page was asked for: everything is as fresh as that, or fresher.
    asked: Instant,
    after: Vec<u8>,
    entries: BTreeMap<Vec<u8>, Attr>,
    /// The last name read so far.
    through: Option<Vec<u8>>,
    /// The directory's end was reached.
    complete: bool,
    filling: bool,
}

impl Window {
    /// Whether a name would be among the entries if it were in the directory when they were read.
    fn covers(&self, name: &[u8]) -> bool {
        let from_start = self.after.is_empty() || name > self.after.as_slice();
        from_start && (self.complete || self.through.as_deref().is_some_and(|t| name <= t))
    }
}

struct Misses {
    first: Instant,
    count: u32,
}

/// A read ahead to run: see [`read_ahead`].
pub(super) struct Plan {
    dir: u64,
    id: u64,
    after: Vec<u8>,
}

impl Plan {
    /// Whether it starts at the directory's first name: one that reaches the end lists it all.
    pub fn starts_at_first_name(&self) -> bool {
        self.after.is_empty()
    }
}

impl Statahead {
    /// A zero `ttl` turns it off.
    pub fn new(ttl: Duration) -> Self {
        Statahead { ttl, inner: Mutex::default() }
    }

    /// The attributes of `name` in `dir` if they were read ahead and nothing since has made
    /// them stale, with how long they may still be kept.
    pub fn get(&self, dir: u64, name: &[u8]) -> Option<(Attr, Duration)> {
        let inner = super::lock(&self.inner);
        let w = inner.windows.get(&dir)?;
        let left = self.ttl.checked_sub(w.asked.elapsed()).filter(|d| !d.is_zero())?;
        let attr = w.entries.get(name)?;
        let stale = |t: Option<&Instant>| t.is_some_and(|t| *t >= w.asked);
        if stale(inner.marked_all.as_ref()) || stale(inner.marks.get(&dir)) || stale(inner.marks.get(&attr.inode)) {
            return None;
        }
        Some((attr.clone(), left))
    }

    /// Notes that meta had to answer a lookup of `name` in `dir`; returns a read ahead to
    /// start when such lookups come often enough and nothing read covers them.
    pub fn missed(&self, dir: u64, name: &[u8]) -> Option<Plan> {
        if self.ttl.is_zero() {
            return None;
        }
        let now = Instant::now();
        let mut inner = super::lock(&self.inner);
        let prev = inner.windows.get(&dir);
        let live = prev.is_some_and(|w| w.filling || (now < w.asked + self.ttl && w.covers(name)));
        // A directory this mount is changing would be read for nothing.
        let recent = |t: Option<&Instant>| t.is_some_and(|t| now < *t + self.ttl);
        if live || recent(inner.marked_all.as_ref()) || recent(inner.marks.get(&dir)) {
            return None;
        }
        let after = match prev {
            Some(w) if !w.covers(name) => name.to_vec(),
            Some(w) => w.after.clone(),
            None => Vec::new(),
        };
        if !self.count_miss(&mut inner, dir, now) {
            return None;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        if inner.windows.len() >= MAX_DIRS && !inner.windows.contains_key(&dir) {
            if let Some(oldest) = inner.windows.iter().min_by_key(|(_, w)| w.asked).map(|(d, _)| *d) {
                inner.windows.remove(&oldest);
            }
        }
        let window = Window { id, asked: now, after: after.clone(), entries: BTreeMap::new(), through: None, complete: false, filling: true };
        inner.windows.insert(dir, window);
        Some(Plan { dir, id, after })
    }

    /// Counts one miss in `dir`; true when enough have come within a TTL.
    fn count_miss(&self, inner: &mut Inner, dir: u64, now: Instant) -> bool {
        if inner.misses.len() >= MAX_MARKS {
            inner.misses.retain(|_, m| now < m.first + self.ttl);
            if inner.misses.len() >= MAX_MARKS {
                // Lookups in that many directories at once: forgetting the counts only delays
                // a read ahead, and keeps this from scanning the map on every miss.
                inner.misses.clear();
            }
        }
        let m = inner.misses.entry(dir).or_insert(Misses { first: now, count: 0 });
        if now >= m.first + self.ttl {
            *m = Misses { first: now, count: 0 };
        }
        m.count += 1;
        if m.count < TRIGGER_MISSES {
            return false;
        }
        inner.misses.remove(&dir);
        true
    }

    /// This mount finished changing `inode` (its attributes, data, links, or the names in it).
    pub fn mark(&self, inode: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut inner = super::lock(&self.inner);
        if inner.marks.len() >= MAX_MARKS {
            // A mark older than a TTL is older than every window still served.
            inner.marks.retain(|_, t| now < *t + self.ttl);
            if inner.marks.len() >= MAX_MARKS {
                // Too many recent changes to track one by one (and to scan on every one):
                // they count as a change of everything.
                inner.marks.clear();
                inner.marked_all = Some(now);
                return;
            }
        }
        inner.marks.insert(inode, now);
    }

    /// Marks `inode` when the returned guard goes, so at the end of the change it guards
    /// however that ends.
    pub fn mark_when_done(&self, inode: u64) -> MarkWhenDone<'_> {
        MarkWhenDone { ahead: self, inode }
    }

    /// This mount finished a change that may have touched inodes it cannot name.
    pub fn mark_all(&self) {
        if !self.ttl.is_zero() {
            super::lock(&self.inner).marked_all = Some(Instant::now());
        }
    }

    /// Takes in one page of a read ahead; false if the window is gone or full, and the read
    /// should stop.
    fn fill(&self, plan: &Plan, entries: Vec<(Vec<u8>, Attr)>, more: bool) -> bool {
        let mut inner = super::lock(&self.inner);
        let Some(w) = inner.windows.get_mut(&plan.dir).filter(|w| w.id == plan.id) else { return false };
        if let Some((last, _)) = entries.last() {
            w.through = Some(last.clone());
        }
        w.entries.extend(entries);
        w.complete = !more;
        w.filling = more && w.entries.len() < MAX_ENTRIES;
        w.filling
    }

    /// A read ahead failed: what it read stays, but nothing more comes.
    fn stop(&self, plan: &Plan) {
        let mut inner = super::lock(&self.inner);
        if let Some(w) = inner.windows.get_mut(&plan.dir).filter(|w| w.id == plan.id) {
            w.filling = false;
        }
    }
}

pub(super) struct MarkWhenDone<'a> {
    ahead: &'a Statahead,
    inode: u64,
}

impl Drop for MarkWhenDone<'_> {
    fn drop(&mut self) {
        self.ahead.mark(self.inode);
    }
}

/// Reads the window `plan` asks for, a page of `page` entries at a time; returns every name
/// of the directory if it read them all from its start, else `None`.
pub(super) async fn read_ahead(client: &EmberClient, ahead: &Statahead, plan: Plan, page: u32) -> Option<Vec<Vec<u8>>> {
    let mut after = plan.after.clone();
    let mut names = Vec::new();
    loop {
        let r = ReadDirReq { inode: plan.dir, after: after.clone(), limit: page, with_attrs: true };
        let resp = match client.meta(&r, Retry::Idempotent).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(dir = plan.dir, error = %e, "statahead stopped");
                ahead.stop(&plan);
                return None;
            }
        };
        if let Some(last) = resp.entries.last() {
            after = last.name.clone();
        }
        if plan.starts_at_first_name() {
            names.extend(resp.entries.iter().map(|e| e.name.clone()));
        }
        let entries = resp.entries.into_iter().filter_map(|e| Some((e.name, e.attr?))).collect();
        ember_telemetry::global().inc("ember_fuse_statahead_pages_total", "", 1);
        if !ahead.fill(&plan, entries, resp.more) {
            return (plan.starts_at_first_name() && !resp.more).then_some(names);
        }
    }
}

/// Lookups served from what was read ahead, for the mount's metrics.
pub(super) fn count_hit() {
    ember_telemetry::global().inc("ember_fuse_statahead_hits_total", "", 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(inode: u64) -> Attr {
        Attr { inode, ..Attr::default() }
    }

    fn name(i: u32) -> Vec<u8> {
        format!("f{i:04}").into_bytes()
    }

    /// Misses `dir` until a read ahead is due, and fills it with `names` as its one page;
    /// `more` says the directory goes on (the read stopped as if at its limit).
    fn read(ahead: &Statahead, dir: u64, names: std::ops::Range<u32>, more: bool) -> Plan {
        let plan = (0..TRIGGER_MISSES).find_map(|_| ahead.missed(dir, b"probe")).expect("no read ahead after the misses");
        let entries = names.map(|i| (name(i), attr(1000 + u64::from(i)))).collect();
        assert_eq!(ahead.fill(&plan, entries, more), more);
        ahead.stop(&plan);
        plan
    }

    #[test]
    fn a_few_misses_start_one_read_whose_entries_answer_until_the_ttl() {
        let ahead = Statahead::new(Duration::from_millis(200));
        for _ in 1..TRIGGER_MISSES {
            assert!(ahead.missed(1, b"a").is_none());
        }
        let plan = ahead.missed(1, b"a").expect("read ahead");
        assert!(plan.starts_at_first_name());
        assert!(ahead.missed(1, b"b").is_none(), "a second read while the first fills");
        assert!(ahead.fill(&plan, vec![(name(0), attr(7))], true));
        let (got, left) = ahead.get(1, &name(0)).expect("served while filling");
        assert_eq!(got.inode, 7);
        assert!(left <= Duration::from_millis(200));
        assert!(!ahead.fill(&plan, vec![(name(1), attr(8))], false));
        assert!(ahead.get(1, &name(1)).is_some());
        assert!(ahead.get(1, b"other").is_none());
        assert!(ahead.get(2, &name(0)).is_none());
        std::thread::sleep(Duration::from_millis(210));
        assert!(ahead.get(1, &name(0)).is_none(), "served past the TTL");
    }

    #[test]
    fn own_changes_stop_what_was_read_before_them() {
        let ahead = Statahead::new(Duration::from_secs(5));
        read(&ahead, 1, 0..10, false);
        ahead.mark(1003);
        assert!(ahead.get(1, &name(3)).is_none(), "a changed inode");
        assert!(ahead.get(1, &name(4)).is_some());
        drop(ahead.mark_when_done(1004));
        assert!(ahead.get(1, &name(4)).is_none(), "a guard marks when it goes");
        ahead.mark(1);
        assert!(ahead.get(1, &name(5)).is_none(), "a changed directory");
        assert!(ahead.missed(1, b"x").is_none() && ahead.missed(1, b"x").is_none(), "read again while changing");

        read(&ahead, 2, 0..10, false);
        ahead.mark_all();
        assert!(ahead.get(2, &name(5)).is_none(), "after an unlink or rename");
    }

    #[test]
    fn a_big_directory_is_read_in_windows_from_where_the_lookups_are() {
        let ahead = Statahead::new(Duration::from_secs(5));
        let first = read(&ahead, 1, 0..10, true);
        assert!(first.starts_at_first_name());
        // Inside what was read: a name made since, nothing to read.
        for _ in 0..TRIGGER_MISSES {
            assert!(ahead.missed(1, &name(5)).is_none());
        }
        let next = (0..TRIGGER_MISSES).find_map(|_| ahead.missed(1, &name(50))).expect("a window further on");
        assert_eq!(next.after, name(50));
        assert!(ahead.get(1, &name(3)).is_none(), "the new window replaced the old");
    }

    #[test]
    fn more_recent_marks_than_can_be_kept_count_as_a_change_of_everything() {
        let ahead = Statahead::new(Duration::from_secs(5));
        read(&ahead, 1, 0..10, false);
        for inode in 0..MAX_MARKS as u64 {
            ahead.mark(1_000_000 + inode);
        }
        assert!(ahead.get(1, &name(5)).is_some());
        ahead.mark(2_000_000);
        assert!(ahead.get(1, &name(5)).is_none());
        assert!(super::super::lock(&ahead.inner).marks.is_empty());
    }

    #[test]
    fn a_zero_ttl_reads_nothing_ahead() {
        let ahead = Statahead::new(Duration::ZERO);
        assert!((0..2 * TRIGGER_MISSES).all(|_| ahead.missed(1, b"a").is_none()));
    }
}
