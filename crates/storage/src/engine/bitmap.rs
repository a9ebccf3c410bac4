//! In-memory allocation bitmap of the blocks in `blocks.dat`.
//!
//! Never persisted: the engine rebuilds it at open from the chunk metadata, which is what makes
//! blocks written by a write that crashed before its metadata commit (orphans) free again.
//!
//! Two levels so that finding the lowest free block stays cheap on large targets: `words` has one
//! bit per block (1 = used), `full` has one bit per word of `words` (1 = that word has no free
//! block). Allocation always takes the lowest free blocks, which keeps the data file compact.

const BITS: u64 = 64;

pub(crate) struct BlockBitmap {
    /// Bit set = block used. Bits at or past `len` are kept set so they are never handed out.
    words: Vec<u64>,
    /// Bit w set = `words[w]` is all ones. Bits for words that do not exist are kept set.
    full: Vec<u64>,
    len: u64,
    used: u64,
    /// No word below this index has a free bit.
    hint: usize,
}

impl BlockBitmap {
    pub fn new() -> Self {
        BlockBitmap {
            words: Vec::new(),
            full: Vec::new(),
            len: 0,
            used: 0,
            hint: 0,
        }
    }

    /// Number of blocks tracked (the data file's size in blocks).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn free(&self) -> u64 {
        self.len - self.used
    }

    /// Starts tracking blocks `[len, new_len)`, all free.
    pub fn grow(&mut self, new_len: u64) {
        if new_len <= self.len {
            return;
        }
        let word_count = new_len.div_ceil(BITS) as usize;
        self.words.resize(word_count, u64::MAX);
        self.full
            .resize(word_count.div_ceil(BITS as usize), u64::MAX);
        let first_word = (self.len / BITS) as usize;
        self.clear_range(self.len, new_len);
        for w in first_word..word_count {
            self.refresh_full(w);
        }
        self.hint = self.hint.min(first_word);
        self.len = new_len;
    }

    /// Marks `b` used; false if it already was (or lies outside the bitmap).
    pub fn mark_used(&mut self, b: u64) -> bool {
        if b >= self.len {
            return false;
        }
        let (w, bit) = split(b);
        if self.words[w] & bit != 0 {
            return false;
        }
        self.words[w] |= bit;
        self.refresh_full(w);
        self.used += 1;
        true
    }

    /// Marks `b` free; false if it was not used (a double free, i.e. a bug).
    pub fn release(&mut self, b: u64) -> bool {
        if b >= self.len {
            return false;
        }
        let (w, bit) = split(b);
        if self.words[w] & bit == 0 {
            return false;
        }
        self.words[w] &= !bit;
        self.refresh_full(w);
        self.used -= 1;
        self.hint = self.hint.min(w);
        true
    }

    /// Takes the `n` lowest free blocks, in ascending order; `None` if fewer than `n` are free.
    pub fn alloc_lowest(&mut self, n: usize) -> Option<Vec<u64>> {
        if (n as u64) > self.free() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let w = self.first_nonfull_word(self.hint)?;
            self.hint = w;
            let mut free_bits = !self.words[w];
            while free_bits != 0 && out.len() < n {
                let bit = free_bits.trailing_zeros();
                free_bits &= free_bits - 1;
                self.words[w] |= 1 << bit;
                out.push(w as u64 * BITS + u64::from(bit));
            }
            self.refresh_full(w);
        }
        self.used += n as u64;
        Some(out)
    }

    fn first_nonfull_word(&self, from: usize) -> Option<usize> {
        let mut s = from / BITS as usize;
        let mut mask = u64::MAX << (from % BITS as usize);
        while s < self.full.len() {
            let candidates = !self.full[s] & mask;
            if candidates != 0 {
                return Some(s * BITS as usize + candidates.trailing_zeros() as usize);
            }
            s += 1;
            mask = u64::MAX;
        }
        None
    }

    /// Clears bits `[lo, hi)` a word at a time (opening a large target must stay fast).
    fn clear_range(&mut self, lo: u64, hi: u64) {
        let mut b = lo;
        while b < hi {
            let (w, off) = ((b / BITS) as usize, b % BITS);
            let n = (BITS - off).min(hi - b);
            let mask = if n == BITS {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << off
            };
            self.words[w] &= !mask;
            b += n;
        }
    }

    fn refresh_full(&mut self, w: usize) {
        let (s, bit) = (w / BITS as usize, 1u64 << (w % BITS as usize));
        if self.words[w] == u64::MAX {
            self.full[s] |= bit;
        } else {
            self.full[s] &= !bit;
        }
    }
}

fn split(b: u64) -> (usize, u64) {
    ((b / BITS) as usize, 1u64 << (b % BITS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_first_and_reuses_freed_blocks() {
        let mut bm = BlockBitmap::new();
        assert_eq!(bm.alloc_lowest(1), None);
        bm.grow(10);
        assert_eq!(bm.alloc_lowest(4), Some(vec![0, 1, 2, 3]));
        assert!(bm.release(1));
        assert!(!bm.release(1), "double free must be reported");
        assert_eq!(bm.alloc_lowest(2), Some(vec![1, 4]));
        assert_eq!(bm.used(), 5);
        assert_eq!(bm.alloc_lowest(6), None, "only 5 free");
        assert_eq!(bm.alloc_lowest(5), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(bm.free(), 0);
    }

    #[test]
    fn spans_many_words_and_grows_past_partial_words() {
        let mut bm = BlockBitmap::new();
        bm.grow(100);
        let all = bm.alloc_lowest(100).unwrap();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        bm.grow(64 * 64 * 3 + 5);
        assert!(bm.mark_used(9000));
        assert!(!bm.mark_used(9000));
        assert!(!bm.mark_used(1_000_000));
        let next = bm.alloc_lowest(3).unwrap();
        assert_eq!(next, vec![100, 101, 102]);
        assert!(bm.release(7));
        assert!(!bm.release(8000), "never allocated");
        assert!(bm.mark_used(8000) && bm.release(8000));
        assert_eq!(bm.alloc_lowest(2).unwrap(), vec![7, 103]);
        let rest = bm.free() as usize;
        let blocks = bm.alloc_lowest(rest).unwrap();
        assert!(blocks.contains(&8000) && !blocks.contains(&9000));
        assert_eq!(*blocks.last().unwrap(), bm.len() - 1);
        assert_eq!(bm.used(), bm.len());
    }
}
