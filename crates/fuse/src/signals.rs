//! Whether a thread of a calling process has a signal to take, read from `/proc`.
//!
//! A FUSE request that waits (a blocking lock) must end when its caller is signalled, as the
//! same call on a local file system would. The kernel tells a file system so with an
//! INTERRUPT request, which `fuser` does not pass on; the signal is still visible as pending
//! in the caller's `/proc/<tid>/status` while the call waits.

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

/// The signal masks of one thread, as `/proc/<tid>/status` prints them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Masks {
    pending: u64,
    shared_pending: u64,
    blocked: u64,
    ignored: u64,
    caught: u64,
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
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => interrupts(&parse(&status)),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masks(pending: u64, blocked: u64, ignored: u64, caught: u64) -> Masks {
        Masks { pending, shared_pending: 0, blocked, ignored, caught }
    }

    const fn bit(sig: i32) -> u64 {
        1 << (sig - 1)
    }

    #[test]
    fn parses_the_status_masks() {
        let text = "Name:\tx\nSigQ:\t0/1\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000004000\n\
                    SigBlk:\t0000000000000002\nSigIgn:\t0000000000001000\nSigCgt:\t0000000000000001\n";
        assert_eq!(parse(text), Masks { pending: 0x100, shared_pending: 0x4000, blocked: 2, ignored: 0x1000, caught: 1 });
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
}
