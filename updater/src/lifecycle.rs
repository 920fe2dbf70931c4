//! After boot and by the operator: blessing the booted slot, detecting a rollback, rolling
//! back on purpose, and the status summary.

use crate::boot::{BootState, Disk, Slot, select};
use crate::install::{HostConfig, InstallError};
use crate::state::{RolledBack, State};
use serde::Serialize;

/// What happened at `mark-good`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// The pending update booted and is now blessed.
    Blessed { version: String, slot: Slot },
    /// The pending update did not boot: the host came back on the old slot.
    RolledBack { version: String, slot: Slot },
    /// Nothing pending; the booted slot is (still) blessed.
    AlreadyGood { slot: Slot },
    /// An update is installed but the host has not rebooted into it yet.
    NotRebooted { version: String, slot: Slot },
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Marks the booted slot good (after the health gate passed, or by the operator). A pending
/// update that is not the booted slot is a rollback: recorded, never retried, its slot made
/// unbootable.
pub fn mark_good(host: &HostConfig) -> Result<BootOutcome, InstallError> {
    let booted = host.booted_slot()?;
    let mut state = State::load(&host.state_dir)?;
    let mut disk = Disk::open(&host.disk)?;
    let mut boot = BootState::load(&host.grubenv)?;
    let outcome = match state.pending.clone() {
        Some(p) if p.slot == booted => {
            state.min_rollback_index = state.min_rollback_index.max(p.rollback_index);
            state.pending = None;
            BootOutcome::Blessed {
                version: p.version,
                slot: booted,
            }
        }
        Some(p) if !p.boot_id.is_empty() && p.boot_id == host.boot_id() => {
            return Ok(BootOutcome::NotRebooted {
                version: p.version,
                slot: p.slot,
            });
        }
        Some(p) => {
            state.rolled_back.push(RolledBack {
                version: p.version.clone(),
                at: unix_now(),
                reason: format!(
                    "{} was installed into {} but the host booted {}",
                    p.version,
                    p.slot.label(),
                    booted.label()
                ),
            });
            state.pending = None;
            let mut next = boot.boot.clone();
            next.make_unbootable(p.slot);
            boot.commit(next, Some(&mut disk))?;
            BootOutcome::RolledBack {
                version: p.version,
                slot: p.slot,
            }
        }
        None => BootOutcome::AlreadyGood { slot: booted },
    };
    let mut next = boot.boot.clone();
    next.bless(booted);
    if next != boot.boot {
        boot.commit(next, Some(&mut disk))?;
    }
    state.save(&host.state_dir)?;
    Ok(outcome)
}

/// Makes the other slot the next boot (it must be blessed, unless `force`).
pub fn rollback(host: &HostConfig, force: bool) -> Result<Slot, InstallError> {
    let booted = host.booted_slot()?;
    let other = booted.other();
    let mut disk = Disk::open(&host.disk)?;
    let mut boot = BootState::load(&host.grubenv)?;
    if !boot.boot.slot(other).ok && !force {
        return Err(InstallError::BootedSlot(format!(
            "{} is not a known-good slot; use --force to try it anyway",
            other.label()
        )));
    }
    let mut next = boot.boot.clone();
    if boot.boot.slot(other).ok {
        next.bless(other);
        // Keep the booted slot as the fallback.
        next.slot_mut(booted).ok = true;
    } else {
        next.try_next(other);
    }
    boot.commit(next, Some(&mut disk))?;
    Ok(other)
}

/// `status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub booted_slot: Option<&'static str>,
    pub booted_version: String,
    pub next_boot: Option<&'static str>,
    pub order: Vec<&'static str>,
    pub slots: Vec<SlotStatus>,
    pub state: State,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub label: &'static str,
    pub partition: u32,
    pub size: u64,
    pub ok: bool,
    pub tries_left: u8,
    pub gpt_priority: u8,
    pub gpt_tries: u8,
    pub gpt_successful: bool,
}

pub fn status(host: &HostConfig) -> Result<Status, InstallError> {
    let booted = host.booted_slot().ok();
    let disk = Disk::open(&host.disk)?;
    let boot = BootState::load(&host.grubenv)?;
    let state = State::load(&host.state_dir)?;
    let slots = [Slot::A, Slot::B]
        .into_iter()
        .map(|s| {
            let p = disk.slot(s);
            let v = boot.boot.slot(s);
            SlotStatus {
                label: s.label(),
                partition: p.number,
                size: p.size,
                ok: v.ok,
                tries_left: v.left,
                gpt_priority: crate::boot::attrs::priority(p.attributes),
                gpt_tries: crate::boot::attrs::tries(p.attributes),
                gpt_successful: crate::boot::attrs::successful(p.attributes),
            }
        })
        .collect();
    Ok(Status {
        booted_slot: booted.map(Slot::label),
        booted_version: crate::host_version(&host.root),
        next_boot: select(&boot.boot).0.map(Slot::label),
        order: boot.boot.order.iter().map(|s| s.label()).collect(),
        slots,
        state,
    })
}
