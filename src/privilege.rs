//! Least privilege for `live`: once the capture (and the output file) is open, nothing that
//! needs a privilege is left to do, so the process gives every privilege up.
//!
//! * Started as root with `--user NAME`: the supplementary groups are cleared, then the group and
//!   the user are switched to NAME's; the kernel clears every capability with the switch away
//!   from uid 0. Getting root back is then checked to fail.
//! * Started unprivileged with file capabilities (`setcap cap_net_raw,cap_net_admin=eip`) or
//!   ambient ones (systemd `AmbientCapabilities=`): every capability is dropped from the
//!   effective, permitted, inheritable and ambient sets.

use nix::unistd::{self, Gid, Uid, User};

/// What [`drop_privileges`] did, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// Switched to this user (uid, gid).
    User { name: String, uid: u32, gid: u32 },
    /// Unprivileged process: capabilities cleared (it held these).
    Capabilities(Vec<String>),
    /// Nothing was held.
    Nothing,
    /// Still root: no `--user` was given.
    StillRoot,
}

/// Gives up privileges: switches to `user` when given (needs root), and clears every
/// capability either way.
pub fn drop_privileges(user: Option<&str>) -> Result<Dropped, String> {
    match user {
        Some(name) => switch_user(name),
        None if unistd::geteuid().is_root() => Ok(Dropped::StillRoot),
        None => clear_capabilities(),
    }
}

fn switch_user(name: &str) -> Result<Dropped, String> {
    let u = User::from_name(name)
        .map_err(|e| format!("--user {name}: cannot look the user up: {e}"))?
        .ok_or_else(|| format!("--user {name}: no such user"))?;
    if !unistd::geteuid().is_root() {
        if unistd::geteuid() == u.uid {
            return clear_capabilities().map(|_| Dropped::User {
                name: name.into(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            });
        }
        return Err(format!(
            "--user {name}: switching user needs root (running as uid {})",
            unistd::geteuid()
        ));
    }
    if u.uid.is_root() {
        return Err(format!("--user {name}: that user is root"));
    }
    unistd::setgroups(&[u.gid]).map_err(|e| format!("--user {name}: setgroups: {e}"))?;
    unistd::setgid(u.gid).map_err(|e| format!("--user {name}: setgid: {e}"))?;
    unistd::setuid(u.uid).map_err(|e| format!("--user {name}: setuid: {e}"))?;
    // The switch must be one-way.
    if unistd::setuid(Uid::from_raw(0)).is_ok() || unistd::setgid(Gid::from_raw(0)).is_ok() {
        return Err(format!(
            "--user {name}: root could be regained after the switch"
        ));
    }
    clear_capabilities()?;
    Ok(Dropped::User {
        name: name.into(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    })
}

fn clear_capabilities() -> Result<Dropped, String> {
    use caps::CapSet;
    let held: Vec<String> = caps::read(None, CapSet::Permitted)
        .map(|s| {
            let mut v: Vec<String> = s.iter().map(|c| c.to_string()).collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    if held.is_empty() {
        // Nothing to give up (ambient and effective are subsets of permitted); also where
        // capability calls are filtered out (some containers).
        return Ok(Dropped::Nothing);
    }
    // Ambient first (it must stay a subset of permitted and inheritable), then the rest.
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("dropping capabilities: {e}"))?;
    }
    Ok(Dropped::Capabilities(held))
}
