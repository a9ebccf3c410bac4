use std::fmt;

/// Numeric status carried on the wire. Values are stable: never renumber, only add.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u16)]
pub enum StatusCode {
    Ok = 0,
    // Generic (1xx)
    Internal = 100,
    InvalidArgument = 101,
    Timeout = 102,
    Unavailable = 103,
    Busy = 104,
    Unsupported = 105,
    /// A blocking call gave up because the calling thread has a signal to take (EINTR).
    Interrupted = 106,
    // Transport (2xx)
    BadFrame = 200,
    FrameTooLarge = 201,
    ChecksumMismatch = 202,
    UnknownMethod = 203,
    DecodeError = 204,
    ConnectionClosed = 205,
    // KV (3xx)
    TxnConflict = 300,
    KvError = 301,
    // Metadata (4xx)
    NotFound = 400,
    AlreadyExists = 401,
    NotDirectory = 402,
    IsDirectory = 403,
    NotEmpty = 404,
    NameTooLong = 405,
    PermissionDenied = 406,
    InvalidRename = 407,
    TooManyLinks = 408,
    NotSymlink = 409,
    StaleHandle = 410,
    /// The request was built for an inline file that has since moved to chunks: redo it.
    InlineMoved = 411,
    /// A spill of an inline file lost its reservation before it finished: start it again.
    SpillLost = 412,
    /// The extended attribute does not exist (ENODATA).
    NoAttribute = 413,
    /// A lock is held by another owner and the caller asked not to wait (EAGAIN).
    LockConflict = 414,
    /// A seek for data or a hole starts past the end of the data (ENXIO).
    NoSuchOffset = 415,
    /// Waiting for the lock would never end: its holders wait, in a cycle, for the caller's
    /// own locks (EDEADLK).
    Deadlock = 416,
    /// The file's locks went with the client's session, which lapsed while it was cut off
    /// from the cluster (EIO until the file is closed, as NFS does).
    LocksLost = 417,
    // Storage (5xx)
    NoSpace = 500,
    IoError = 501,
    CorruptData = 502,
    ChunkTooLarge = 503,
    NoSuchTarget = 504,
    VersionMismatch = 505,
    /// A replica cannot confirm that its copy of a chunk is committed: read from the primary.
    NotCommitted = 506,
    // Cluster (6xx)
    RoutingStale = 600,
    NotRegistered = 601,
}

impl StatusCode {
    const ALL: [StatusCode; 43] = [
        StatusCode::Ok,
        StatusCode::Internal,
        StatusCode::InvalidArgument,
        StatusCode::Timeout,
        StatusCode::Unavailable,
        StatusCode::Busy,
        StatusCode::Unsupported,
        StatusCode::Interrupted,
        StatusCode::BadFrame,
        StatusCode::FrameTooLarge,
        StatusCode::ChecksumMismatch,
        StatusCode::UnknownMethod,
        StatusCode::DecodeError,
        StatusCode::ConnectionClosed,
        StatusCode::TxnConflict,
        StatusCode::KvError,
        StatusCode::NotFound,
        StatusCode::AlreadyExists,
        StatusCode::NotDirectory,
        StatusCode::IsDirectory,
        StatusCode::NotEmpty,
        StatusCode::NameTooLong,
        StatusCode::PermissionDenied,
        StatusCode::InvalidRename,
        StatusCode::TooManyLinks,
        StatusCode::NotSymlink,
        StatusCode::StaleHandle,
        StatusCode::InlineMoved,
        StatusCode::SpillLost,
        StatusCode::NoAttribute,
        StatusCode::LockConflict,
        StatusCode::NoSuchOffset,
        StatusCode::Deadlock,
        StatusCode::LocksLost,
        StatusCode::NoSpace,
        StatusCode::IoError,
        StatusCode::CorruptData,
        StatusCode::ChunkTooLarge,
        StatusCode::NoSuchTarget,
        StatusCode::VersionMismatch,
        StatusCode::NotCommitted,
        StatusCode::RoutingStale,
        StatusCode::NotRegistered,
    ];

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Unknown codes from a newer peer become `Internal` rather than failing the decode.
    pub fn from_u16(v: u16) -> StatusCode {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.as_u16() == v)
            .unwrap_or(StatusCode::Internal)
    }

    /// Whether a client may retry the same request unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            StatusCode::Timeout
                | StatusCode::Unavailable
                | StatusCode::Busy
                | StatusCode::TxnConflict
                | StatusCode::RoutingStale
                | StatusCode::ConnectionClosed
        )
    }
}

/// A status code with a human-readable message: the error every RPC can return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: StatusCode,
    pub message: String,
}

impl Status {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Status { code, message: message.into() }
    }

    pub fn not_found(what: impl fmt::Display) -> Self {
        Status::new(StatusCode::NotFound, format!("{what} not found"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Status::new(StatusCode::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Status::new(StatusCode::Internal, message)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({}): {}", self.code, self.code.as_u16(), self.message)
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_maps_to_internal() {
        for c in StatusCode::ALL {
            assert_eq!(StatusCode::from_u16(c.as_u16()), c);
        }
        assert_eq!(StatusCode::from_u16(9999), StatusCode::Internal);
    }
}
