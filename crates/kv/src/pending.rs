//! A transaction's buffered writes.

/// A commutative operation whose input is only known at commit time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtomicOp {
    Add(i64),
    Max(u64),
}

impl AtomicOp {
    pub(crate) fn apply(self, current: Option<&[u8]>) -> Vec<u8> {
        let raw = decode_u64(current);
        let result = match self {
            // Reinterpreting the bits is the point: the value is a two's-complement i64.
            AtomicOp::Add(delta) => (raw as i64).wrapping_add(delta) as u64,
            AtomicOp::Max(value) => raw.max(value),
        };
        result.to_le_bytes().to_vec()
    }
}

/// Little-endian, zero-extended when short, bytes past the eighth ignored: a missing or empty
/// value counts as zero, so counters need no initialization.
fn decode_u64(value: Option<&[u8]>) -> u64 {
    let mut buf = [0u8; 8];
    if let Some(bytes) = value {
        let n = bytes.len().min(8);
        buf[..n].copy_from_slice(&bytes[..n]);
    }
    u64::from_le_bytes(buf)
}

/// What a transaction will write to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Fully determined by the transaction: a value or a delete.
    Put(Option<Vec<u8>>),
    /// Atomic operations to apply, in order, to the latest committed value.
    Atomic(Vec<AtomicOp>),
}

impl Pending {
    /// Adds `op` after whatever is already buffered.
    pub(crate) fn push(&mut self, op: AtomicOp) {
        match self {
            Pending::Put(value) => *value = Some(op.apply(value.as_deref())),
            Pending::Atomic(ops) => ops.push(op),
        }
    }

    /// The value this key will have if the committed value is `base`.
    pub(crate) fn resolve(&self, base: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match self {
            Pending::Put(value) => value.clone(),
            Pending::Atomic(ops) => Some(apply_all(base, ops)),
        }
    }
}

fn apply_all(base: Option<Vec<u8>>, ops: &[AtomicOp]) -> Vec<u8> {
    ops.iter()
        .fold(base, |value, op| Some(op.apply(value.as_deref())))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i64_of(v: &[u8]) -> i64 {
        i64::from_le_bytes(v.try_into().unwrap())
    }

    #[test]
    fn add_treats_missing_and_short_values_as_zero() {
        assert_eq!(i64_of(&AtomicOp::Add(5).apply(None)), 5);
        assert_eq!(i64_of(&AtomicOp::Add(-5).apply(Some(b""))), -5);
        assert_eq!(i64_of(&AtomicOp::Add(1).apply(Some(&[2]))), 3);
        assert_eq!(i64_of(&AtomicOp::Add(1).apply(Some(&i64::MAX.to_le_bytes()))), i64::MIN);
    }

    #[test]
    fn max_keeps_the_larger_value() {
        let seven = 7u64.to_le_bytes();
        assert_eq!(AtomicOp::Max(3).apply(Some(&seven)), seven.to_vec());
        assert_eq!(AtomicOp::Max(9).apply(Some(&seven)), 9u64.to_le_bytes().to_vec());
        assert_eq!(AtomicOp::Max(0).apply(None), 0u64.to_le_bytes().to_vec());
    }

    #[test]
    fn ops_after_a_put_fold_into_the_put() {
        let mut p = Pending::Put(None);
        p.push(AtomicOp::Add(4));
        p.push(AtomicOp::Max(2));
        assert_eq!(p, Pending::Put(Some(4u64.to_le_bytes().to_vec())));
    }

    #[test]
    fn atomic_ops_apply_in_order_to_the_base() {
        let p = Pending::Atomic(vec![AtomicOp::Max(10), AtomicOp::Add(1)]);
        assert_eq!(p.resolve(Some(3u64.to_le_bytes().to_vec())), Some(11u64.to_le_bytes().to_vec()));
        assert_eq!(Pending::Put(None).resolve(Some(vec![1])), None);
    }
}
