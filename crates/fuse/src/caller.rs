//! What `/proc/<tid>/status` tells of the thread behind a request: whether it has a signal to
//! take, and whether it holds CAP_FSETID.
//!
//! A FUSE request that waits (a blocking lock) must end when its caller is signalled, as the
//! same call on a local file system would. The kernel tells a file system so with an
//! INTERRUPT request, which this mount declines (so the kernel stops sending them): the
//! signal is also visible as pending in the caller's status while the call waits, and a wait
//! that polls meta anyway looks there. The kernel flags writes and truncates by callers
//! without CAP_FSETID, but not fallocate or copy_file_range, for which the mount asks here.

/// The capability's number (`linux/capability.h`).
const CAP_FSETID: u32 = 4;

/// Signals whose default action is not to end the process (ignored or stopping): pending
/// and neither caught nor fatal, they do not interrupt a system call.
const HARMLESS_BY_DEFAULT: [u32; 8] = [
    libc::SIGCHLD as u32,
    libc::SIGCONT as u32,
    libc::SIGURG as u32,
    libc::SIGWINCH as u32,
    libc::SIGSTOP as u32,
    libc::SIGTSTP as u32,
    libc::SIGTTIN as u32,
    libc::SIGTTOU as u32,
];

/// The signal masks and effective capabilities of one thread, as its status prints them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Masks {
    pending: u64,
    shared_pending: u64,
    blocked: u64,
    ignored: u64,
    caught: u64,
    capabilities: u64,
}

fn parse(status: &str) -> Masks {
    let mut m = Masks::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let Ok(bits) = u64::from_str_radix(value.trim(), 16) else { continue };
        match key {
            "SigPnd" => m.pending = bits,
            "ShdPnd" => m.shared_pending = bits,
            "SigBlk" => m.blocked = bits,
            "SigIgn" => m.ignored = bits,
            "SigCgt" => m.caught = bits,
            "CapEff" => m.capabilities = bits,
            _ => {}
        }
    }
    m
}

fn interrupts(m: &Masks) -> bool {
    let harmless = HARMLESS_BY_DEFAULT.iter().fold(0u64, |acc, s| acc | 1 << (s - 1));
    let deliverable = (m.pending | m.shared_pending) & !m.blocked & !m.ignored;
    deliverable & (m.caught | !harmless) != 0
}

/// Whether thread `tid` has a signal that would interrupt a system call (a caught one, or
/// one that ends the process). A thread that is gone counts as interrupted: nobody waits.
pub fn pending(tid: u32) -> bool {
    status(tid).is_none_or(|m| interrupts(&m))
}

fn status(tid: u32) -> Option<Masks> {
    std::fs::read_to_string(format!("/proc/{tid}/status")).ok().map(|s| parse(&s))
}

/// Whether thread `tid` holds CAP_FSETID (keeps setuid and setgid when it changes a file).
/// A thread that is gone counts as not holding it: clearing the bits is the safe side.
pub fn may_keep_setid(tid: u32) -> bool {
    status(tid).is_some_and(|m| m.capabilities & 1 << CAP_FSETID != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masks(pending: u64, blocked: u64, ignored: u64, caught: u64) -> Masks {
        Masks { pending, shared_pending: 0, blocked, ignored, caught, capabilities: 0 }
    }

    const fn bit(sig: i32) -> u64 {
        1 << (sig - 1)
    }

    #[test]
    fn parses_the_status_masks() {
        let text = "Name:\tx\nSigQ:\t0/1\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000004000\n\
                    SigBlk:\t0000000000000002\nSigIgn:\t0000000000001000\nSigCgt:\t0000000000000001\n\
                    CapEff:\t0000000000000010\n";
        let m = Masks { pending: 0x100, shared_pending: 0x4000, blocked: 2, ignored: 0x1000, caught: 1, capabilities: 0x10 };
        assert_eq!(parse(text), m);
    }

    #[test]
    fn caught_and_fatal_signals_interrupt_blocked_ignored_and_harmless_ones_do_not() {
        assert!(!interrupts(&masks(0, 0, 0, 0)));
        assert!(interrupts(&masks(bit(libc::SIGKILL), 0, 0, 0)));
        assert!(interrupts(&masks(bit(libc::SIGTERM), 0, 0, 0)), "fatal by default");
        assert!(!interrupts(&masks(bit(libc::SIGUSR1), bit(libc::SIGUSR1), 0, bit(libc::SIGUSR1))), "blocked");
        assert!(!interrupts(&masks(bit(libc::SIGUSR1), 0, bit(libc::SIGUSR1), 0)), "ignored");
        assert!(!interrupts(&masks(bit(libc::SIGCHLD), 0, 0, 0)), "ignored by default");
        assert!(interrupts(&masks(bit(libc::SIGCHLD), 0, 0, bit(libc::SIGCHLD))), "caught");
        let shared = Masks { shared_pending: bit(libc::SIGINT), ..Masks::default() };
        assert!(interrupts(&shared));
    }

    #[test]
    fn this_thread_has_nothing_pending_and_a_missing_thread_counts_as_interrupted() {
        let tid = unsafe { libc::gettid() } as u32;
        assert!(!pending(tid));
        assert!(pending(u32::MAX));
    }

    #[test]
    fn root_holds_cap_fsetid_and_a_missing_thread_does_not() {
        let tid = unsafe { libc::gettid() } as u32;
        assert_eq!(may_keep_setid(tid), unsafe { libc::geteuid() } == 0);
        assert!(!may_keep_setid(u32::MAX));
    }
}
