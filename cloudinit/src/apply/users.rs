//! The account database under a root: `/etc/passwd`, `/etc/shadow`, `/etc/group` and
//! `/etc/gshadow`, edited in memory the way `useradd` would (UID/GID allocation from
//! `login.defs`, user private groups, supplementary groups) and written back under the
//! same locks shadow-utils takes (`/etc/.pwd.lock` via `fcntl`, and `<file>.lock`
//! link files), so a concurrent `useradd --root` cannot interleave with us.

use super::fsops::{self, FsError};
use nix::fcntl::{FcntlArg, fcntl};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait for the shadow-utils locks before giving up (lckpwdf waits 15 s).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(15);

/// `login.defs` defaults, used when the root has no `/etc/login.defs`.
const DEFAULT_UID_MIN: u32 = 1000;
const DEFAULT_UID_MAX: u32 = 60000;
const DEFAULT_SYS_UID_MIN: u32 = 101;
const DEFAULT_SYS_UID_MAX: u32 = 999;
/// Login shell of new users when neither the config nor `/etc/default/useradd` says.
pub const DEFAULT_SHELL: &str = "/bin/bash";

/// Files of the account database, relative to the root.
pub const PASSWD: &str = "/etc/passwd";
pub const SHADOW: &str = "/etc/shadow";
pub const GROUP: &str = "/etc/group";
pub const GSHADOW: &str = "/etc/gshadow";

/// Problems planning or writing accounts.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("user {user:?}: group {group:?} does not exist")]
    NoGroup { user: String, group: String },
    #[error(
        "user {user:?}: a group named {user:?} already exists (set primary_group or no_user_group)"
    )]
    GroupExists { user: String },
    #[error("no free {what} id left for {name:?}")]
    NoFreeId { what: &'static str, name: String },
    #[error("owner {owner:?}: no such user or group")]
    NoOwner { owner: String },
    #[error("cannot lock the account database: {path} is held by another process")]
    Locked { path: PathBuf },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// One `name:…` line split on `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line(pub Vec<String>);

impl Line {
    fn parse(s: &str) -> Line {
        Line(s.split(':').map(str::to_string).collect())
    }
    pub fn field(&self, i: usize) -> &str {
        self.0.get(i).map(String::as_str).unwrap_or("")
    }
    fn set(&mut self, i: usize, v: String) {
        while self.0.len() <= i {
            self.0.push(String::new());
        }
        self.0[i] = v;
    }
    fn name(&self) -> &str {
        self.field(0)
    }
}

/// One database file: its lines (unparsable lines are kept verbatim as one field).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub lines: Vec<Line>,
}

impl Table {
    fn parse(text: &str) -> Table {
        Table {
            lines: text
                .lines()
                .filter(|l| !l.is_empty())
                .map(Line::parse)
                .collect(),
        }
    }
    pub fn render(&self) -> String {
        self.lines
            .iter()
            .map(|l| format!("{}\n", l.0.join(":")))
            .collect()
    }
    pub fn get(&self, name: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.name() == name)
    }
    fn get_mut(&mut self, name: &str) -> Option<&mut Line> {
        self.lines.iter_mut().find(|l| l.name() == name)
    }
    fn ids(&self) -> Vec<u32> {
        self.lines
            .iter()
            .filter_map(|l| l.field(2).parse().ok())
            .collect()
    }
}

/// The four files, as read from a root and as planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: Table,
    pub shadow: Table,
    pub group: Table,
    pub gshadow: Table,
    uid_min: u32,
    uid_max: u32,
    sys_uid_min: u32,
    sys_uid_max: u32,
    pub default_shell: String,
}

/// A user to create.
#[derive(Debug, Clone, Default)]
pub struct NewUser<'a> {
    pub name: &'a str,
    pub passwd: Option<&'a str>,
    pub gecos: Option<&'a str>,
    pub home: String,
    pub primary_group: Option<&'a str>,
    pub groups: &'a [String],
    pub no_user_group: bool,
    pub system: bool,
    pub shell: Option<&'a str>,
}

fn read_opt(path: &Path) -> Result<String, UserError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UserError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn setting(text: &str, key: &str, sep: char) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let (k, v) = l.split_once(sep)?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

impl Accounts {
    /// Reads the database under `root` (missing files are empty).
    pub fn load(root: &Path) -> Result<Accounts, UserError> {
        let read = |p: &str| read_opt(&fsops::in_root(root, p));
        let defs = read("/etc/login.defs")?;
        let num = |k: &str, d: u32| {
            setting(&defs.replace('\t', " "), k, ' ')
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let useradd = read("/etc/default/useradd")?;
        Ok(Accounts {
            passwd: Table::parse(&read(PASSWD)?),
            shadow: Table::parse(&read(SHADOW)?),
            group: Table::parse(&read(GROUP)?),
            gshadow: Table::parse(&read(GSHADOW)?),
            uid_min: num("UID_MIN", DEFAULT_UID_MIN),
            uid_max: num("UID_MAX", DEFAULT_UID_MAX),
            sys_uid_min: num("SYS_UID_MIN", DEFAULT_SYS_UID_MIN),
            sys_uid_max: num("SYS_UID_MAX", DEFAULT_SYS_UID_MAX),
            default_shell: setting(&useradd, "SHELL", '=')
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SHELL.to_string()),
        })
    }

    pub fn user(&self, name: &str) -> Option<(u32, u32, String)> {
        let l = self.passwd.get(name)?;
        Some((
            l.field(2).parse().ok()?,
            l.field(3).parse().ok()?,
            l.field(5).to_string(),
        ))
    }

    pub fn gid(&self, name: &str) -> Option<u32> {
        self.group.get(name)?.field(2).parse().ok()
    }

    /// Resolves a `write_files` owner: `user`, `user:group`, `user.group` or numbers.
    pub fn owner(&self, owner: &str) -> Result<(u32, u32), UserError> {
        let err = || UserError::NoOwner {
            owner: owner.to_string(),
        };
        let (u, g) = match owner.split_once([':', '.']) {
            Some((u, g)) => (u, Some(g)),
            None => (owner, None),
        };
        let (uid, default_gid) = if let Ok(n) = u.parse::<u32>() {
            (
                n,
                self.passwd
                    .lines
                    .iter()
                    .find(|l| l.field(2) == u)
                    .and_then(|l| l.field(3).parse().ok())
                    .unwrap_or(0),
            )
        } else {
            let (uid, gid, _) = self.user(u).ok_or_else(err)?;
            (uid, gid)
        };
        let gid = match g {
            None | Some("") => default_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self.gid(g).ok_or_else(err)?,
            },
        };
        Ok((uid, gid))
    }

    fn free_id(&self, table_ids: &[u32], system: bool, prefer: Option<u32>) -> Option<u32> {
        if let Some(p) = prefer
            && !table_ids.contains(&p)
        {
            return Some(p);
        }
        if system {
            (self.sys_uid_min..=self.sys_uid_max)
                .rev()
                .find(|id| !table_ids.contains(id))
        } else {
            // useradd: one above the highest id in range, else the first free one.
            let highest = table_ids
                .iter()
                .filter(|id| (self.uid_min..=self.uid_max).contains(*id))
                .max();
            match highest {
                Some(h) if *h < self.uid_max => Some(h + 1),
                Some(_) => (self.uid_min..=self.uid_max).find(|id| !table_ids.contains(id)),
                None => Some(self.uid_min),
            }
        }
    }

    /// Adds a user as `useradd` would; `days` is today's date in days since the epoch.
    pub fn add_user(&mut self, u: &NewUser<'_>, days: u64) -> Result<(u32, u32), UserError> {
        let uids = self.passwd.ids();
        let uid = self
            .free_id(&uids, u.system, None)
            .ok_or_else(|| UserError::NoFreeId {
                what: "user",
                name: u.name.to_string(),
            })?;
        let gid = if let Some(g) = u.primary_group {
            match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self.gid(g).ok_or_else(|| UserError::NoGroup {
                    user: u.name.to_string(),
                    group: g.to_string(),
                })?,
            }
        } else if u.no_user_group {
            self.gid("users").unwrap_or(100)
        } else {
            if self.group.get(u.name).is_some() {
                return Err(UserError::GroupExists {
                    user: u.name.to_string(),
                });
            }
            let gid = self
                .free_id(&self.group.ids(), u.system, Some(uid))
                .ok_or_else(|| UserError::NoFreeId {
                    what: "group",
                    name: u.name.to_string(),
                })?;
            self.add_group(u.name, gid);
            gid
        };
        for g in u.groups {
            if self.group.get(g).is_none() {
                return Err(UserError::NoGroup {
                    user: u.name.to_string(),
                    group: g.clone(),
                });
            }
        }
        for g in u.groups {
            add_member(&mut self.group, g, 3, u.name);
            add_member(&mut self.gshadow, g, 3, u.name);
        }
        let shell = u.shell.unwrap_or(&self.default_shell).to_string();
        self.passwd.lines.push(Line(vec![
            u.name.into(),
            "x".into(),
            uid.to_string(),
            gid.to_string(),
            u.gecos.unwrap_or("").into(),
            u.home.clone(),
            shell,
        ]));
        self.shadow.lines.push(Line(vec![
            u.name.into(),
            u.passwd.unwrap_or("*").into(),
            days.to_string(),
            "0".into(),
            "99999".into(),
            "7".into(),
            String::new(),
            String::new(),
            String::new(),
        ]));
        Ok((uid, gid))
    }

    fn add_group(&mut self, name: &str, gid: u32) {
        self.group.lines.push(Line(vec![
            name.into(),
            "x".into(),
            gid.to_string(),
            String::new(),
        ]));
        self.gshadow.lines.push(Line(vec![
            name.into(),
            "!".into(),
            String::new(),
            String::new(),
        ]));
    }

    /// Sets the password hash of an existing user (what `chpasswd -e` does).
    pub fn set_password(&mut self, name: &str, hash: &str, days: u64) -> bool {
        match self.shadow.get_mut(name) {
            Some(l) if l.field(1) == hash => false,
            Some(l) => {
                l.set(1, hash.to_string());
                l.set(2, days.to_string());
                true
            }
            None => {
                self.shadow.lines.push(Line(vec![
                    name.into(),
                    hash.into(),
                    days.to_string(),
                    "0".into(),
                    "99999".into(),
                    "7".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]));
                true
            }
        }
    }
}

fn add_member(table: &mut Table, group: &str, field: usize, user: &str) {
    if let Some(l) = table.get_mut(group) {
        let mut members: Vec<String> = l
            .field(field)
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        if !members.iter().any(|m| m == user) {
            members.push(user.to_string());
            l.set(field, members.join(","));
        }
    }
}

/// Mode of each database file (shadow files are not world-readable).
pub fn mode_of(file: &str) -> u32 {
    if file == SHADOW || file == GSHADOW {
        0o640
    } else {
        0o644
    }
}

/// The shadow-utils locks, released on drop.
#[derive(Debug)]
pub struct DbLock {
    _pwd_lock: fs::File,
    link_locks: Vec<PathBuf>,
}

impl Drop for DbLock {
    fn drop(&mut self) {
        for l in &self.link_locks {
            let _ = fs::remove_file(l);
        }
    }
}

/// Takes `/etc/.pwd.lock` (fcntl write lock, as `lckpwdf`) and `<file>.lock` for each
/// database file (link-based, as shadow-utils' `commonio_lock`), waiting up to
/// [`LOCK_TIMEOUT`].
pub fn lock(root: &Path) -> Result<DbLock, UserError> {
    let etc = fsops::in_root(root, "/etc");
    fsops::ensure_dir(root, &etc, 0o755, 0, 0)
        .or_else(|e| if etc.is_dir() { Ok(()) } else { Err(e) })?;
    let pwd_lock_path = etc.join(".pwd.lock");
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&pwd_lock_path)
        .map_err(|source| UserError::Read {
            path: pwd_lock_path.clone(),
            source,
        })?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let flock = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    while fcntl(file.as_raw_fd(), FcntlArg::F_SETLK(&flock)).is_err() {
        if Instant::now() > deadline {
            return Err(UserError::Locked {
                path: pwd_lock_path,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut guard = DbLock {
        _pwd_lock: file,
        link_locks: Vec::new(),
    };
    let pid = std::process::id();
    for f in [PASSWD, SHADOW, GROUP, GSHADOW] {
        let target = fsops::in_root(root, f);
        let lock = PathBuf::from(format!("{}.lock", target.display()));
        let tmp = PathBuf::from(format!("{}.{pid}", target.display()));
        fs::write(&tmp, format!("{pid}\0")).map_err(|source| UserError::Read {
            path: tmp.clone(),
            source,
        })?;
        loop {
            match fs::hard_link(&tmp, &lock) {
                Ok(()) => break,
                Err(_) if stale(&lock) => {
                    let _ = fs::remove_file(&lock);
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(UserError::Locked { path: lock });
                }
            }
        }
        let _ = fs::remove_file(&tmp);
        guard.link_locks.push(lock);
    }
    Ok(guard)
}

/// A `.lock` file whose process is gone (shadow-utils removes those too).
fn stale(lock: &Path) -> bool {
    let Ok(text) = fs::read_to_string(lock) else {
        return false;
    };
    match text.trim_end_matches('\0').trim().parse::<i32>() {
        Ok(pid) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Accounts {
        let mut a = Accounts {
            passwd: Table::parse(
                "root:x:0:0:root:/root:/bin/bash\ncore:x:500:500:Core:/home/core:/bin/bash\n",
            ),
            shadow: Table::parse("root:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n"),
            group: Table::parse("root:x:0:\ndocker:x:233:core\ncore:x:500:\n"),
            gshadow: Table::parse("root:*::\ndocker:!::core\ncore:!::\n"),
            ..Accounts::default()
        };
        a.uid_min = 1000;
        a.uid_max = 60000;
        a.sys_uid_min = 101;
        a.sys_uid_max = 999;
        a.default_shell = "/bin/bash".into();
        a
    }

    #[test]
    fn add_user_like_useradd() {
        let mut a = base();
        let groups = vec!["docker".to_string()];
        let (uid, gid) = a
            .add_user(
                &NewUser {
                    name: "alice",
                    home: "/home/alice".into(),
                    groups: &groups,
                    ..NewUser::default()
                },
                20000,
            )
            .unwrap();
        assert_eq!((uid, gid), (1000, 1000));
        assert_eq!(a.group.get("docker").unwrap().field(3), "core,alice");
        assert_eq!(
            a.shadow.get("alice").unwrap().0.join(":"),
            "alice:*:20000:0:99999:7:::"
        );
        let (sys, _) = a
            .add_user(
                &NewUser {
                    name: "svc",
                    home: "/var/lib/svc".into(),
                    system: true,
                    ..NewUser::default()
                },
                20000,
            )
            .unwrap();
        assert_eq!(sys, 999);
        assert!(matches!(
            a.add_user(
                &NewUser {
                    name: "bob",
                    home: "/home/bob".into(),
                    primary_group: Some("nope"),
                    ..NewUser::default()
                },
                1
            ),
            Err(UserError::NoGroup { .. })
        ));
        assert_eq!(a.owner("alice:docker").unwrap(), (1000, 233));
        assert_eq!(a.owner("core").unwrap(), (500, 500));
        assert_eq!(a.owner("0:0").unwrap(), (0, 0));
        assert!(a.owner("nobody-here").is_err());
    }
}
