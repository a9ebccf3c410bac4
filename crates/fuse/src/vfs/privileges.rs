//! Setuid, setgid and file capabilities dropped when a file changes, as Linux does: the
//! capability on any write, truncate or chown; setuid and setgid when someone without
//! CAP_FSETID writes or truncates, and on chown. The kernel leaves this to the mount
//! (FUSE_HANDLE_KILLPRIV_V2), which spares it asking for `security.capability` before every
//! write.

use ember_client::Retry;
use ember_proto::meta::SetAttrReq;
use ember_types::Status;

use super::{attr_of, Vfs};

const CAPABILITY: &[u8] = b"security.capability";

/// Whether `mode` has bits a change without CAP_FSETID drops: setuid, and setgid on a
/// group-executable file (setgid without group execute marks mandatory locking and stays).
fn holds_privileges(mode: u32) -> bool {
    mode & 0o4000 != 0 || mode & 0o2010 == 0o2010
}

impl Vfs {
    /// Before a change of the open file's data: drops its capability and, with `setid` (the
    /// writer lacks CAP_FSETID), its setuid and setgid. Returns whether meta was asked (the
    /// kernel's cached attributes are then stale); a file this mount knows to hold neither
    /// costs nothing.
    pub async fn drop_privileges(&self, fh: u64, setid: bool) -> Result<bool, Status> {
        let h = self.handle(fh)?;
        let kill_setid = setid && holds_privileges(h.state.lock().await.mode);
        let drop_capability = !self.missing_xattrs.known_missing(h.inode.0, CAPABILITY);
        if !kill_setid && !drop_capability {
            return Ok(false);
        }
        let _mark = self.statahead.mark_when_done(h.inode.0);
        let r = SetAttrReq { inode: h.inode.0, kill_setid, drop_capability, ..SetAttrReq::default() };
        let attr = attr_of(self.client.meta(&r, Retry::Idempotent).await?)?;
        self.missing_xattrs.note(h.inode.0, CAPABILITY);
        h.state.lock().await.mode = attr.mode;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::holds_privileges;

    #[test]
    fn setgid_without_group_execute_is_not_a_privilege() {
        assert!(holds_privileges(0o4644) && holds_privileges(0o2750) && holds_privileges(0o6711));
        assert!(!holds_privileges(0o2740) && !holds_privileges(0o755) && !holds_privileges(0o1777));
    }
}
