use ember_types::{Status, StatusCode};

/// The errno a kernel caller sees for a status.
pub fn errno_of(st: &Status) -> i32 {
    match st.code {
        StatusCode::NotFound => libc::ENOENT,
        StatusCode::AlreadyExists => libc::EEXIST,
        StatusCode::NotDirectory => libc::ENOTDIR,
        StatusCode::IsDirectory => libc::EISDIR,
        StatusCode::NotEmpty => libc::ENOTEMPTY,
        StatusCode::NameTooLong => libc::ENAMETOOLONG,
        StatusCode::PermissionDenied => libc::EPERM,
        StatusCode::InvalidRename | StatusCode::InvalidArgument => libc::EINVAL,
        StatusCode::TooManyLinks => libc::EMLINK,
        StatusCode::NoSpace => libc::ENOSPC,
        StatusCode::Unsupported => libc::EOPNOTSUPP,
        StatusCode::Timeout => libc::ETIMEDOUT,
        StatusCode::StaleHandle => libc::ESTALE,
        StatusCode::ChunkTooLarge => libc::EFBIG,
        StatusCode::NotSymlink => libc::EINVAL,
        StatusCode::NoAttribute => libc::ENODATA,
        StatusCode::LockConflict => libc::EAGAIN,
        StatusCode::Interrupted => libc::EINTR,
        StatusCode::NoSuchOffset => libc::ENXIO,
        StatusCode::Deadlock => libc::EDEADLK,
        StatusCode::LocksLost => libc::EIO,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_posix_relevant_codes() {
        let e = |c| errno_of(&Status::new(c, ""));
        assert_eq!(e(StatusCode::NotFound), libc::ENOENT);
        assert_eq!(e(StatusCode::InvalidRename), libc::EINVAL);
        assert_eq!(e(StatusCode::NotEmpty), libc::ENOTEMPTY);
        assert_eq!(e(StatusCode::CorruptData), libc::EIO);
    }
}
