//! The one error type of the metadata crate and its mapping to wire status codes.

use ember_kv::KvError;
use ember_types::{InodeId, Status, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("inode {0} is not a directory")]
    NotDirectory(InodeId),
    #[error("inode {0} is a directory")]
    IsDirectory(InodeId),
    #[error("directory {0} is not empty")]
    NotEmpty(InodeId),
    #[error("name of {0} bytes is longer than 255")]
    NameTooLong(usize),
    #[error("cannot move directory {0} into its own subtree")]
    InvalidRename(InodeId),
    #[error("inode {0} has too many links")]
    TooManyLinks(InodeId),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("moved to chunks: {0}")]
    InlineMoved(String),
    #[error("spill lost its reservation: {0}")]
    SpillLost(String),
    #[error("no extended attribute {0}")]
    NoAttribute(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("deadlock: {0}")]
    Deadlock(String),
    #[error("kv: {0}")]
    Kv(#[from] KvError),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("rpc: {0}")]
    Rpc(Status),
}

impl MetaError {
    pub fn code(&self) -> StatusCode {
        match self {
            MetaError::NotFound(_) => StatusCode::NotFound,
            MetaError::AlreadyExists(_) => StatusCode::AlreadyExists,
            MetaError::NotDirectory(_) => StatusCode::NotDirectory,
            MetaError::IsDirectory(_) => StatusCode::IsDirectory,
            MetaError::NotEmpty(_) => StatusCode::NotEmpty,
            MetaError::NameTooLong(_) => StatusCode::NameTooLong,
            MetaError::InvalidRename(_) => StatusCode::InvalidRename,
            MetaError::TooManyLinks(_) => StatusCode::TooManyLinks,
            MetaError::PermissionDenied(_) => StatusCode::PermissionDenied,
            MetaError::InvalidArgument(_) => StatusCode::InvalidArgument,
            MetaError::Unsupported(_) => StatusCode::Unsupported,
            MetaError::Unavailable(_) => StatusCode::Unavailable,
            MetaError::Busy(_) => StatusCode::Busy,
            MetaError::InlineMoved(_) => StatusCode::InlineMoved,
            MetaError::SpillLost(_) => StatusCode::SpillLost,
            MetaError::NoAttribute(_) => StatusCode::NoAttribute,
            MetaError::NoSpace(_) => StatusCode::NoSpace,
            MetaError::Deadlock(_) => StatusCode::Deadlock,
            MetaError::Kv(e) if e.is_retryable() => StatusCode::TxnConflict,
            MetaError::Kv(_) => StatusCode::KvError,
            MetaError::Corrupt(_) | MetaError::Internal(_) | MetaError::Io(_) => {
                StatusCode::Internal
            }
            MetaError::Rpc(s) => s.code,
        }
    }

    /// The status sent to the client.
    pub fn status(&self) -> Status {
        match self {
            MetaError::Rpc(s) => s.clone(),
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

impl From<MetaError> for Status {
    fn from(e: MetaError) -> Status {
        e.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_wire_codes() {
        assert_eq!(
            MetaError::Kv(KvError::Conflict).code(),
            StatusCode::TxnConflict
        );
        assert_eq!(MetaError::Kv(KvError::Closed).code(), StatusCode::KvError);
        assert_eq!(
            MetaError::NotEmpty(InodeId(5)).status().code,
            StatusCode::NotEmpty
        );
        let s = Status::new(StatusCode::Timeout, "slow");
        assert_eq!(MetaError::Rpc(s.clone()).status(), s);
    }
}
