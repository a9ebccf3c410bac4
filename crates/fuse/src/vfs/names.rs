//! Directories whose every name this mount knows for a moment, so that a lookup of a name
//! that is not there is answered here instead of by meta.
//!
//! A directory this mount has just made is empty, and one it has just listed in full holds
//! what the listing said. For `ttl` from that moment a lookup of any other name in it is
//! answered "no such entry" locally. That is the promise the kernel already makes for each
//! negative entry it keeps for the entry timeout, given for all missing names at once: a name
//! another client creates meanwhile shows up here at most `ttl` late. Nothing can be lost or
//! doubled by it, because meta checks every change itself (an exclusive create of a name
//! another client made still fails).
//!
//! The mount's own changes keep the set exact; a change whose outcome is unknown drops the
//! directory. When the `ttl` has passed, one getattr of the directory renews it for another
//! `ttl` if meta counted exactly the entry changes this mount made itself since then
//! (`Attr::entry_changes`): nobody else changed it. Meta's count can only exceed the mount's
//! own, since every change the mount counts has happened on meta, so equal counts leave no
//! room for a change by someone else.
//!
//! The point is the create of a new file: without this the kernel's lookup before it costs a
//! metadata round trip that can only answer "not there" (untar, checkouts, builds and
//! training jobs fill directories they have made).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ember_types::{Status, StatusCode};

/// Directories held at once; more are not tracked until some expire.
const MAX_DIRS: usize = 256;
/// Names held per directory; a bigger one is not tracked (its listing would be memory for
/// little gain: lookups in it go to meta as before).
const MAX_NAMES: usize = 4096;

pub(super) struct KnownNames {
    ttl: Duration,
    dirs: Mutex<HashMap<u64, Known>>,
    /// Changes of names made by this mount so far: a listing during which one happened may
    /// have missed it, so it is not kept.
    changes: AtomicU64,
}

/// Taken before a listing starts; see [`KnownNames::listed`].
pub(super) struct ListingStart {
    changes: u64,
    at: Instant,
}

struct Known {
    names: HashSet<Vec<u8>>,
    until: Instant,
    /// Meta's entry-change count if nobody else changed the directory; `None` once another
    /// client's change was seen or a change of this mount was not counted.
    changes: Option<u64>,
}

/// What [`KnownNames::absent`] can say about a name.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Absence {
    /// Certainly not in the directory.
    Absent,
    /// The directory's names were known until a moment ago: renewable if meta still counts
    /// these entry changes.
    Expired { changes: u64 },
    /// Ask meta.
    Unknown,
}

impl KnownNames {
    /// A zero `ttl` turns it off: every lookup goes to meta.
    pub fn new(ttl: Duration) -> Self {
        KnownNames { ttl, dirs: Mutex::default(), changes: AtomicU64::new(0) }
    }

    /// Whether `name` is certainly not in `dir`, as of at most `ttl` ago.
    pub fn absent(&self, dir: u64, name: &[u8]) -> Absence {
        let mut dirs = super::lock(&self.dirs);
        let Some(k) = dirs.get(&dir) else { return Absence::Unknown };
        if k.names.contains(name) {
            return Absence::Unknown;
        }
        if k.until > Instant::now() {
            return Absence::Absent;
        }
        match k.changes {
            Some(changes) => Absence::Expired { changes },
            None => {
                dirs.remove(&dir);
                Absence::Unknown
            }
        }
    }

    /// Meta counted `changes` for `dir`, read from `since` on: if that is what this mount
    /// expects, nobody else changed the directory and its names stay known for another `ttl`.
    pub fn renew(&self, dir: u64, changes: u64, since: Instant) -> bool {
        let renewed = self.confirm(dir, changes, since);
        if !renewed {
            self.forget(dir);
        }
        renewed
    }

    /// Like [`renew`](Self::renew) with meta's count as a change of this mount left it; a
    /// count that differs may be a change of this mount still on its way, so it only means
    /// no renewal.
    pub fn confirm(&self, dir: u64, changes: u64, since: Instant) -> bool {
        let mut dirs = super::lock(&self.dirs);
        match dirs.get_mut(&dir) {
            Some(k) if k.changes == Some(changes) => {
                k.until = k.until.max(since + self.ttl);
                true
            }
            _ => false,
        }
    }

    /// `dir` was just made by this mount: it has no entries, and meta counted `changes`.
    pub fn made_empty(&self, dir: u64, changes: u64) {
        self.learn(dir, Known { names: HashSet::new(), until: Instant::now() + self.ttl, changes: Some(changes) });
    }

    pub fn listing_start(&self) -> ListingStart {
        ListingStart { changes: self.changes.load(Ordering::Acquire), at: Instant::now() }
    }

    /// `dir` holds exactly `names`, as listed from `start` on, unless this mount changed a
    /// name anywhere meanwhile.
    pub fn listed<'a>(&self, dir: u64, names: impl ExactSizeIterator<Item = &'a [u8]>, start: ListingStart) {
        if names.len() > MAX_NAMES || self.changes.load(Ordering::Acquire) != start.changes {
            return;
        }
        let names = names.map(<[u8]>::to_vec).collect();
        self.learn(dir, Known { names, until: start.at + self.ttl, changes: None });
    }

    fn learn(&self, dir: u64, known: Known) {
        if self.ttl.is_zero() {
            return;
        }
        let mut dirs = super::lock(&self.dirs);
        if dirs.len() >= MAX_DIRS {
            let now = Instant::now();
            dirs.retain(|_, k| k.until > now);
            if dirs.len() >= MAX_DIRS {
                return;
            }
        }
        dirs.insert(dir, known);
    }

    /// Keeps `dir` exact after this mount changed `name` in it: `made` says whether the
    /// change makes the name (create, link) or removes it (unlink, rmdir). A name found
    /// there, or found missing, was another client's doing.
    pub fn changed<T>(&self, dir: u64, name: &[u8], made: bool, outcome: &Result<T, Status>) {
        match outcome {
            Ok(_) => self.apply(dir, name, made, true),
            Err(e) if e.code == StatusCode::AlreadyExists => self.apply(dir, name, true, false),
            Err(e) if e.code == StatusCode::NotFound => self.apply(dir, name, false, false),
            Err(_) => self.forget(dir),
        }
    }

    /// A change this mount cannot count one for one (a rename: it may replace a name too):
    /// the names stay right, but the directory is not renewed when its `ttl` passes.
    pub fn uncounted(&self, dir: u64) {
        if let Some(k) = super::lock(&self.dirs).get_mut(&dir) {
            k.changes = None;
        }
    }

    fn apply(&self, dir: u64, name: &[u8], there: bool, by_this_mount: bool) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        let mut dirs = super::lock(&self.dirs);
        let Some(k) = dirs.get_mut(&dir) else { return };
        if there && k.names.len() >= MAX_NAMES {
            dirs.remove(&dir);
            return;
        }
        if there {
            k.names.insert(name.to_vec());
        } else {
            k.names.remove(name);
        }
        k.changes = k.changes.filter(|_| by_this_mount).map(|c| c + 1);
    }

    /// What `dir` holds is no longer certain (a change in it may or may not have happened).
    pub fn forget(&self, dir: u64) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        super::lock(&self.dirs).remove(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: StatusCode) -> Result<(), Status> {
        Err(Status::new(code, ""))
    }

    #[test]
    fn a_made_directory_answers_for_missing_names_until_the_ttl_passes() {
        let known = KnownNames::new(Duration::from_millis(50));
        assert_eq!(known.absent(7, b"a"), Absence::Unknown, "an unknown directory answers nothing");
        known.made_empty(7, 0);
        assert_eq!(known.absent(7, b"a"), Absence::Absent);
        known.changed(7, b"a", true, &Ok(()));
        assert_eq!(known.absent(7, b"a"), Absence::Unknown);
        assert_eq!(known.absent(7, b"b"), Absence::Absent);
        known.changed(7, b"a", false, &Ok(()));
        assert_eq!(known.absent(7, b"a"), Absence::Absent);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(known.absent(7, b"b"), Absence::Expired { changes: 2 }, "two changes of this mount");
        assert!(!known.renew(7, 3, Instant::now()), "meta counted a change by someone else");
        assert_eq!(known.absent(7, b"b"), Absence::Unknown);
    }

    #[test]
    fn a_directory_nobody_else_changed_is_renewed() {
        let known = KnownNames::new(Duration::from_millis(30));
        known.made_empty(5, 0);
        known.changed(5, b"a", true, &Ok(()));
        std::thread::sleep(Duration::from_millis(40));
        assert!(known.renew(5, 1, Instant::now()));
        assert_eq!(known.absent(5, b"b"), Absence::Absent);
        known.changed(5, b"d", true, &Ok(()));
        assert!(!known.confirm(5, 3, Instant::now()), "a count ahead of this mount's renews nothing");
        std::thread::sleep(Duration::from_millis(40));
        assert!(known.confirm(5, 2, Instant::now()), "the answer to a change renews");
        assert_eq!(known.absent(5, b"b"), Absence::Absent);
        known.changed(5, b"c", true, &err(StatusCode::AlreadyExists));
        assert_eq!(known.absent(5, b"c"), Absence::Unknown, "a create that found the name says it is there");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(known.absent(5, b"b"), Absence::Unknown, "another client's change ends the renewals");
        known.made_empty(6, 4);
        known.uncounted(6);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(known.absent(6, b"b"), Absence::Unknown);
    }

    #[test]
    fn a_listing_is_what_the_directory_holds_and_an_unknown_outcome_drops_it() {
        let known = KnownNames::new(Duration::from_secs(5));
        let names: [&[u8]; 2] = [b"x", b"y"];
        known.listed(3, names.into_iter(), known.listing_start());
        assert_eq!(known.absent(3, b"x"), Absence::Unknown);
        assert_eq!(known.absent(3, b"z"), Absence::Absent);
        known.changed(3, b"z", true, &err(StatusCode::Timeout));
        assert_eq!(known.absent(3, b"z"), Absence::Unknown, "a create that may have happened drops the directory");
        let start = known.listing_start();
        known.changed(9, b"q", true, &Ok(()));
        known.listed(3, names.into_iter(), start);
        assert_eq!(known.absent(3, b"z"), Absence::Unknown, "a listing that raced with a change of this mount is not kept");
    }

    #[test]
    fn zero_ttl_and_big_directories_are_not_tracked() {
        let off = KnownNames::new(Duration::ZERO);
        off.made_empty(1, 0);
        assert_eq!(off.absent(1, b"a"), Absence::Unknown);
        let known = KnownNames::new(Duration::from_secs(5));
        let many: Vec<Vec<u8>> = (0..=MAX_NAMES).map(|i| i.to_string().into_bytes()).collect();
        known.listed(2, many.iter().map(Vec::as_slice), known.listing_start());
        assert_eq!(known.absent(2, b"none"), Absence::Unknown);
        known.made_empty(4, 0);
        for name in &many {
            known.changed(4, name, true, &Ok(()));
        }
        assert_eq!(known.absent(4, b"none"), Absence::Unknown, "a directory that outgrew the limit is dropped");
    }
}
