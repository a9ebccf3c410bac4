//! Errors of the chunk engine and their mapping to wire status codes.

use ember_types::{Status, StatusCode};

/// Everything that can go wrong inside a [`ChunkEngine`](super::ChunkEngine).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The operating system reported an I/O error (other than running out of space).
    #[error("i/o error: {0}")]
    Io(std::io::Error),
    /// Stored data or metadata failed verification (CRC mismatch, undecodable record, ...).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Bytes received from a peer do not match the CRC32C sent with them.
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),
    /// The disk (or the target's configured capacity) is full.
    #[error("no space left on storage target")]
    NoSpace,
    /// The write or truncate would make the chunk larger than the engine's maximum chunk size.
    #[error("chunk too large: {0}")]
    TooLarge(String),
    /// The request itself is malformed (e.g. a read offset past the maximum chunk size).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The metadata store (fjall) failed.
    #[error("chunk metadata store: {0}")]
    Meta(String),
    /// A versioned change was built on another version of the chunk than the one stored.
    #[error("chunk is at version {current}, the change expects {expected}")]
    VersionMismatch { current: u64, expected: u64 },
    /// The simulation decided the process dies at this persistence point.
    #[error("simulated crash at {0}")]
    Crashed(&'static str),
}

impl EngineError {
    /// The status a storage RPC should return for this error.
    pub fn status(&self) -> Status {
        let code = match self {
            EngineError::Io(_) | EngineError::Meta(_) | EngineError::Crashed(_) => StatusCode::IoError,
            EngineError::Corrupt(_) => StatusCode::CorruptData,
            EngineError::ChecksumMismatch(_) => StatusCode::ChecksumMismatch,
            EngineError::NoSpace => StatusCode::NoSpace,
            EngineError::TooLarge(_) => StatusCode::ChunkTooLarge,
            EngineError::InvalidArgument(_) => StatusCode::InvalidArgument,
            EngineError::VersionMismatch { .. } => StatusCode::VersionMismatch,
        };
        Status::new(code, self.to_string())
    }

    /// Maps an OS error, turning "disk full" errors into [`EngineError::NoSpace`] so callers can
    /// react to them (pick another target) instead of treating them as hardware failures.
    pub(crate) fn from_io(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => EngineError::NoSpace,
            _ => EngineError::Io(e),
        }
    }

    pub(crate) fn from_fjall(e: fjall::Error) -> Self {
        match e {
            fjall::Error::Io(io) => match Self::from_io(io) {
                EngineError::Io(io) => EngineError::Meta(io.to_string()),
                other => other,
            },
            other => EngineError::Meta(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_status_codes() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(EngineError::from_io(enospc), EngineError::NoSpace));
        assert_eq!(EngineError::NoSpace.status().code, StatusCode::NoSpace);
        assert_eq!(
            EngineError::Corrupt("x".into()).status().code,
            StatusCode::CorruptData
        );
        assert_eq!(
            EngineError::TooLarge("x".into()).status().code,
            StatusCode::ChunkTooLarge
        );
        assert_eq!(
            EngineError::InvalidArgument("x".into()).status().code,
            StatusCode::InvalidArgument
        );
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(EngineError::from_io(eio).status().code, StatusCode::IoError);
    }
}
