//! What PID 1 told the server through its environment (see [`crate::rootfs::server_env`]): the
//! root filesystem's default working directory and user, or why it could not be set up. Taken
//! out of the environment at start, so that commands do not inherit them.

use crate::rootfs::server_env;
use std::sync::OnceLock;

/// Defaults for every command.
#[derive(Debug, Default)]
pub(crate) struct Defaults {
    /// Working directory when the request names none.
    pub(crate) cwd: Option<Vec<u8>>,
    /// `(uid, gid)` commands run as.
    pub(crate) user: Option<(u32, u32)>,
    /// Why the root filesystem could not be set up: every exec is refused with it.
    pub(crate) rootfs_error: Option<String>,
    /// PID 1's boot marks, as it encoded them.
    pub(crate) boot: String,
    /// The listening socket PID 1 passed (its descriptor number), if it did.
    pub(crate) listen_fd: Option<i32>,
}

static DEFAULTS: OnceLock<Defaults> = OnceLock::new();

/// Reads and removes the variables. Call once, before any thread starts.
pub(crate) fn take() {
    let mut d = Defaults::default();
    if let Some(v) = std::env::var_os(server_env::CWD) {
        d.cwd = Some(v.into_encoded_bytes());
    }
    if let Ok(v) = std::env::var(server_env::USER) {
        d.user = parse_user(&v);
        if d.user.is_none() {
            d.rootfs_error = Some(format!("malformed {}={v:?}", server_env::USER));
        }
    }
    if let Ok(v) = std::env::var(server_env::ROOTFS_ERROR) {
        d.rootfs_error = Some(v);
    }
    d.boot = std::env::var(server_env::BOOT).unwrap_or_default();
    d.listen_fd = std::env::var(server_env::LISTEN_FD)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2);
    for k in [
        server_env::CWD,
        server_env::USER,
        server_env::ROOTFS_ERROR,
        server_env::BOOT,
        server_env::LISTEN_FD,
    ] {
        // SAFETY: called by `run` before it starts any thread: nothing else reads or writes the
        // environment concurrently.
        unsafe { std::env::remove_var(k) };
    }
    let _ = DEFAULTS.set(d);
}

/// The defaults (empty when [`take`] was not called, as in unit tests).
pub(crate) fn get() -> &'static Defaults {
    DEFAULTS.get_or_init(Defaults::default)
}

/// `uid:gid`.
fn parse_user(v: &str) -> Option<(u32, u32)> {
    let (u, g) = v.split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse() {
        assert_eq!(parse_user("1000:50"), Some((1000, 50)));
        assert_eq!(parse_user("1000"), None);
        assert_eq!(parse_user("a:b"), None);
    }
}
