//! A/B boot state.
//!
//! What the bootloader reads is the GRUB environment block: `ORDER` (slots in preference
//! order), and per slot `<S>_OK` (blessed) and `<S>_LEFT` (tries left). GRUB walks ORDER,
//! boots the first blessed slot, or the first with tries left after decrementing them
//! ([`GRUB_SELECT`], the script the Keel image runs; [`select`] is the same decision in
//! Rust). The GPT attributes of USR-A/USR-B mirror it in the CoreOS/ChromeOS layout
//! (priority bits 48–51, tries 52–55, successful 56) for `cgpt`/`sgdisk` inspection.

use crate::grubenv::{GrubEnv, GrubEnvError};
use crate::layout;
use std::path::{Path, PathBuf};

/// Tries a freshly installed slot gets.
pub const TRIES: u8 = 3;

/// One of the two USR slots.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "USR-A",
            Slot::B => "USR-B",
        }
    }

    pub fn partition(self) -> u32 {
        match self {
            Slot::A => layout::USR_A,
            Slot::B => layout::USR_B,
        }
    }

    pub fn partuuid(self) -> &'static str {
        match self {
            Slot::A => layout::USR_A_UUID,
            Slot::B => layout::USR_B_UUID,
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" | "a" | "USR-A" => Some(Slot::A),
            "B" | "b" | "USR-B" => Some(Slot::B),
            _ => None,
        }
    }
}

/// GPT attribute helpers (CoreOS/ChromeOS layout).
pub mod attrs {
    pub const PRIORITY_SHIFT: u32 = 48;
    pub const TRIES_SHIFT: u32 = 52;
    pub const SUCCESSFUL_BIT: u32 = 56;
    const MASK: u64 = !((0xf << PRIORITY_SHIFT) | (0xf << TRIES_SHIFT) | (1 << SUCCESSFUL_BIT));

    pub fn priority(a: u64) -> u8 {
        ((a >> PRIORITY_SHIFT) & 0xf) as u8
    }

    pub fn tries(a: u64) -> u8 {
        ((a >> TRIES_SHIFT) & 0xf) as u8
    }

    pub fn successful(a: u64) -> bool {
        (a >> SUCCESSFUL_BIT) & 1 == 1
    }

    /// `a` with the three fields replaced (other bits kept).
    pub fn with(a: u64, priority: u8, tries: u8, successful: bool) -> u64 {
        (a & MASK)
            | (u64::from(priority & 0xf) << PRIORITY_SHIFT)
            | (u64::from(tries & 0xf) << TRIES_SHIFT)
            | (u64::from(successful) << SUCCESSFUL_BIT)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    GrubEnv(#[from] GrubEnvError),
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read its GPT")]
    Gpt {
        path: PathBuf,
        #[source]
        source: gptman::Error,
    },
    #[error("{path}: no partition labelled {label} (Keel's layout has USR-A = 3, USR-B = 4)")]
    NoSlot { path: PathBuf, label: &'static str },
    #[error("{path}: {var}={value:?} is not valid")]
    BadVar {
        path: PathBuf,
        var: String,
        value: String,
    },
}

/// A USR slot on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPart {
    pub number: u32,
    /// Byte offset and length on the disk.
    pub offset: u64,
    pub size: u64,
    pub attributes: u64,
}

/// The disk holding the slots.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub a: SlotPart,
    pub b: SlotPart,
}

impl Disk {
    /// Reads the GPT of `path` (a disk image or block device) and finds USR-A and USR-B.
    pub fn open(path: &Path) -> Result<Disk, BootError> {
        let mut f = std::fs::File::open(path).map_err(|source| BootError::Io {
            path: path.to_path_buf(),
            op: "open",
            source,
        })?;
        let gpt = gptman::GPT::find_from(&mut f).map_err(|source| BootError::Gpt {
            path: path.to_path_buf(),
            source,
        })?;
        let find = |slot: Slot| -> Result<SlotPart, BootError> {
            for (n, p) in gpt.iter() {
                if p.is_used() && p.partition_name.as_str() == slot.label() {
                    return Ok(SlotPart {
                        number: n,
                        offset: p.starting_lba * gpt.sector_size,
                        size: (p.ending_lba - p.starting_lba + 1) * gpt.sector_size,
                        attributes: p.attribute_bits,
                    });
                }
            }
            Err(BootError::NoSlot {
                path: path.to_path_buf(),
                label: slot.label(),
            })
        };
        Ok(Disk {
            path: path.to_path_buf(),
            a: find(Slot::A)?,
            b: find(Slot::B)?,
        })
    }

    pub fn slot(&self, s: Slot) -> &SlotPart {
        match s {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// Sets the GPT attributes of both slots (both GPT copies, CRCs recomputed), fsynced.
    pub fn set_attributes(&mut self, a: u64, b: u64) -> Result<(), BootError> {
        let io = |op: &'static str| {
            let path = self.path.clone();
            move |source| BootError::Io { path, op, source }
        };
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io("open for writing"))?;
        let mut gpt = gptman::GPT::find_from(&mut f).map_err(|source| BootError::Gpt {
            path: self.path.clone(),
            source,
        })?;
        gpt[self.a.number].attribute_bits = a;
        gpt[self.b.number].attribute_bits = b;
        gpt.write_into(&mut f).map_err(|source| BootError::Gpt {
            path: self.path.clone(),
            source,
        })?;
        f.sync_all().map_err(io("fsync"))?;
        self.a.attributes = a;
        self.b.attributes = b;
        Ok(())
    }
}

/// The boot variables of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotBoot {
    pub ok: bool,
    pub left: u8,
}

/// The A/B variables in the GRUB environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEnv {
    pub order: Vec<Slot>,
    pub a: SlotBoot,
    pub b: SlotBoot,
}

impl BootEnv {
    /// A fresh disk: A blessed and first, B empty.
    pub fn initial() -> BootEnv {
        BootEnv {
            order: vec![Slot::A, Slot::B],
            a: SlotBoot { ok: true, left: 0 },
            b: SlotBoot { ok: false, left: 0 },
        }
    }

    pub fn slot(&self, s: Slot) -> SlotBoot {
        match s {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    pub fn slot_mut(&mut self, s: Slot) -> &mut SlotBoot {
        match s {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// Reads the variables from `env` (missing ones take [`BootEnv::initial`]'s values).
    pub fn from_env(path: &Path, env: &GrubEnv) -> Result<BootEnv, BootError> {
        let mut out = BootEnv::initial();
        let bad = |var: &str, value: &str| BootError::BadVar {
            path: path.to_path_buf(),
            var: var.to_string(),
            value: value.to_string(),
        };
        if let Some(order) = env.get("ORDER") {
            let slots: Option<Vec<Slot>> = order.split_whitespace().map(Slot::parse).collect();
            out.order = slots
                .filter(|s| !s.is_empty() && s.len() <= 2 && (s.len() < 2 || s[0] != s[1]))
                .ok_or_else(|| bad("ORDER", order))?;
        }
        for s in [Slot::A, Slot::B] {
            let ok_var = format!("{}_OK", s.name());
            if let Some(v) = env.get(&ok_var) {
                out.slot_mut(s).ok = match v {
                    "1" => true,
                    "0" => false,
                    _ => return Err(bad(&ok_var, v)),
                };
            }
            let left_var = format!("{}_LEFT", s.name());
            if let Some(v) = env.get(&left_var) {
                out.slot_mut(s).left = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= 15)
                    .ok_or_else(|| bad(&left_var, v))?;
            }
        }
        Ok(out)
    }

    /// Writes the variables into `env` (ORDER, A_OK, A_LEFT, B_OK, B_LEFT).
    pub fn to_env(&self, env: &mut GrubEnv) -> Result<(), GrubEnvError> {
        let order: Vec<&str> = self.order.iter().map(|s| s.name()).collect();
        env.set("ORDER", &order.join(" "))?;
        for s in [Slot::A, Slot::B] {
            let v = self.slot(s);
            env.set(&format!("{}_OK", s.name()), if v.ok { "1" } else { "0" })?;
            env.set(&format!("{}_LEFT", s.name()), &v.left.to_string())?;
        }
        Ok(())
    }

    fn put_first(&mut self, s: Slot) {
        self.order = vec![s, s.other()];
    }

    /// Before writing `s`: never boot it.
    pub fn make_unbootable(&mut self, s: Slot) {
        *self.slot_mut(s) = SlotBoot { ok: false, left: 0 };
        self.put_first(s.other());
    }

    /// After `s` was written and verified: try it next, [`TRIES`] times.
    pub fn try_next(&mut self, s: Slot) {
        *self.slot_mut(s) = SlotBoot {
            ok: false,
            left: TRIES,
        };
        self.put_first(s);
    }

    /// `s` proved healthy.
    pub fn bless(&mut self, s: Slot) {
        *self.slot_mut(s) = SlotBoot { ok: true, left: 0 };
        self.put_first(s);
    }

    /// The GPT attributes mirroring this state: priority 2 for the first slot in ORDER, 1
    /// for the second, 0 for an unbootable slot; tries = LEFT; successful = OK.
    pub fn gpt_attributes(&self, a: u64, b: u64) -> (u64, u64) {
        let attr = |s: Slot, old: u64| {
            let v = self.slot(s);
            let bootable = v.ok || v.left > 0;
            let prio = if !bootable {
                0
            } else if self.order.first() == Some(&s) {
                2
            } else {
                1
            };
            attrs::with(old, prio, v.left, v.ok)
        };
        (attr(Slot::A, a), attr(Slot::B, b))
    }
}

/// What GRUB does at boot: the slot it boots and the state it saves. `None` = no bootable
/// slot (GRUB falls back to its rescue entry).
pub fn select(env: &BootEnv) -> (Option<Slot>, BootEnv) {
    let mut next = env.clone();
    for &s in &env.order {
        let v = env.slot(s);
        if v.ok {
            return (Some(s), next);
        }
        if v.left != 0 {
            next.slot_mut(s).left = v.left - 1;
            return (Some(s), next);
        }
    }
    (None, next)
}

/// The GRUB script the Keel image runs (stock GRUB 2.06 commands only: bookworm's GRUB has
/// neither `gptprio` nor `increment`); it sets `usr_slot` to `A`, `B` or empty.
pub const GRUB_SELECT: &str = r#"set usr_slot=""
load_env --file "$keel_env" ORDER A_OK A_LEFT B_OK B_LEFT
for S in $ORDER; do
  if [ "$S" = "A" ]; then OK="$A_OK"; LEFT="$A_LEFT"; fi
  if [ "$S" = "B" ]; then OK="$B_OK"; LEFT="$B_LEFT"; fi
  if [ "$OK" = "1" ]; then usr_slot="$S"; break; fi
  if [ -n "$LEFT" -a "$LEFT" != "0" ]; then
    usr_slot="$S"
    if   [ "$LEFT" = "15" ]; then LEFT=14
    elif [ "$LEFT" = "14" ]; then LEFT=13
    elif [ "$LEFT" = "13" ]; then LEFT=12
    elif [ "$LEFT" = "12" ]; then LEFT=11
    elif [ "$LEFT" = "11" ]; then LEFT=10
    elif [ "$LEFT" = "10" ]; then LEFT=9
    elif [ "$LEFT" = "9" ]; then LEFT=8
    elif [ "$LEFT" = "8" ]; then LEFT=7
    elif [ "$LEFT" = "7" ]; then LEFT=6
    elif [ "$LEFT" = "6" ]; then LEFT=5
    elif [ "$LEFT" = "5" ]; then LEFT=4
    elif [ "$LEFT" = "4" ]; then LEFT=3
    elif [ "$LEFT" = "3" ]; then LEFT=2
    elif [ "$LEFT" = "2" ]; then LEFT=1
    else LEFT=0; fi
    if [ "$S" = "A" ]; then A_LEFT="$LEFT"; else B_LEFT="$LEFT"; fi
    save_env --file "$keel_env" A_LEFT B_LEFT
    break
  fi
done
"#;

/// The boot environment file and the disk together.
#[derive(Debug)]
pub struct BootState {
    pub env_path: PathBuf,
    pub env: GrubEnv,
    pub boot: BootEnv,
}

impl BootState {
    /// Reads the environment block (a missing file is a fresh disk).
    pub fn load(env_path: &Path) -> Result<BootState, BootError> {
        let env = match std::fs::metadata(env_path) {
            Ok(_) => GrubEnv::read(env_path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GrubEnv::new(),
            Err(source) => {
                return Err(BootError::Io {
                    path: env_path.to_path_buf(),
                    op: "stat",
                    source,
                });
            }
        };
        let boot = BootEnv::from_env(env_path, &env)?;
        Ok(BootState {
            env_path: env_path.to_path_buf(),
            env,
            boot,
        })
    }

    /// Writes `boot` (the commit point: one in-place 1024-byte write + fdatasync), then
    /// mirrors it into the GPT attributes of `disk`.
    pub fn commit(&mut self, boot: BootEnv, disk: Option<&mut Disk>) -> Result<(), BootError> {
        let mut env = self.env.clone();
        boot.to_env(&mut env)?;
        env.write(&self.env_path)?;
        self.env = env;
        self.boot = boot;
        if let Some(disk) = disk {
            let (a, b) = self
                .boot
                .gpt_attributes(disk.a.attributes, disk.b.attributes);
            disk.set_attributes(a, b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boots(mut env: BootEnv, n: usize) -> Vec<Option<Slot>> {
        (0..n)
            .map(|_| {
                let (s, next) = select(&env);
                env = next;
                s
            })
            .collect()
    }

    #[test]
    fn first_try_exhausted_tries_blessed_and_both_bad() {
        // A blessed, B just installed: B three times, then back to A.
        let mut e = BootEnv::initial();
        e.try_next(Slot::B);
        assert_eq!(
            boots(e.clone(), 5),
            [
                Some(Slot::B),
                Some(Slot::B),
                Some(Slot::B),
                Some(Slot::A),
                Some(Slot::A)
            ]
        );
        // B blessed after its first boot: B forever.
        let (_, mut after) = select(&e);
        after.bless(Slot::B);
        assert_eq!(boots(after, 3), [Some(Slot::B); 3]);
        // Both bad.
        let mut bad = BootEnv::initial();
        bad.make_unbootable(Slot::A);
        assert_eq!(boots(bad, 2), [None, None]);
        // Writing B makes it unbootable while A stays.
        let mut w = BootEnv::initial();
        w.make_unbootable(Slot::B);
        assert_eq!(boots(w, 2), [Some(Slot::A); 2]);
    }

    #[test]
    fn attributes_mirror_the_env() {
        let mut e = BootEnv::initial();
        e.try_next(Slot::B);
        let (a, b) = e.gpt_attributes(0, 1 << 2);
        assert_eq!(
            (attrs::priority(a), attrs::tries(a), attrs::successful(a)),
            (1, 0, true)
        );
        assert_eq!(
            (attrs::priority(b), attrs::tries(b), attrs::successful(b)),
            (2, 3, false)
        );
        assert_eq!(b & 0xffff, 1 << 2, "other bits kept");
        e.make_unbootable(Slot::B);
        let (_, b) = e.gpt_attributes(0, 0);
        assert_eq!(attrs::priority(b), 0);
    }

    #[test]
    fn env_round_trip_and_errors() {
        let mut env = GrubEnv::new();
        let mut e = BootEnv::initial();
        e.try_next(Slot::B);
        e.to_env(&mut env).unwrap();
        assert_eq!(BootEnv::from_env(Path::new("g"), &env).unwrap(), e);
        env.set("ORDER", "A C").unwrap();
        let err = BootEnv::from_env(Path::new("/boot/grub/grubenv"), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ORDER") && err.contains("grubenv"), "{err}");
        env.set("ORDER", "B A").unwrap();
        env.set("B_LEFT", "x").unwrap();
        assert!(BootEnv::from_env(Path::new("g"), &env).is_err());
    }
}
