use crate::meta::LayoutMsg;
use ember_types::{ChainId, Layout, LayoutError};

pub fn layout_to_msg(l: &Layout) -> LayoutMsg {
    LayoutMsg { chunk_size: l.chunk_size, chains: l.chains.iter().map(|c| c.0).collect() }
}

/// Validates as it converts: a layout from the wire is untrusted input.
pub fn layout_from_msg(m: &LayoutMsg) -> Result<Layout, LayoutError> {
    Layout::new(m.chunk_size, m.chains.iter().copied().map(ChainId).collect())
}
