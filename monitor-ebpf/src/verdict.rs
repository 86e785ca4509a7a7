//! The residency policy as the kernel holds it: the verdict tables the agent compiles (per
//! network, the classes that may exchange data there) and the one lookup that answers, for a
//! class and an address, "approved or not". Enforcement refuses on it; the egress program skips
//! announcing the new flows it approves (the sweep finds them). Tables are in force only while a
//! class enforces.

use aya_ebpf::maps::lpm_trie::Key;
use monitor_common::{CLASS_NONE, FAMILY_V4, policy_slot};

use crate::maps::{POLICY, VERDICTS_V4_A, VERDICTS_V4_B, VERDICTS_V6_A, VERDICTS_V6_B};

/// Classes the verdict tables speak for (bits of their values).
const TABLE_CLASSES: u32 = 64;

/// Whether the tables in force approve `addr` for class `class_id` (1 to 64). None when they
/// cannot say: no table in force, or a class they do not cover.
#[inline(always)]
pub fn table_approves(class_id: u32, family: u8, addr: &[u8; 16]) -> Option<bool> {
    if class_id == CLASS_NONE || class_id > TABLE_CLASSES {
        return None;
    }
    let bit = 1u64 << (class_id - 1);
    let active = POLICY.get(policy_slot::ACTIVE).copied().unwrap_or(0);
    let mask = match as_v4(family, addr) {
        Some(v4) => {
            let key = Key::new(32, v4);
            match active {
                1 => VERDICTS_V4_A.get(&key),
                2 => VERDICTS_V4_B.get(&key),
                _ => return None,
            }
        }
        None => {
            let key = Key::new(128, *addr);
            match active {
                1 => VERDICTS_V6_A.get(&key),
                2 => VERDICTS_V6_B.get(&key),
                _ => return None,
            }
        }
    };
    // The tables cover every address; no entry means no table.
    mask.map(|m| *m & bit != 0)
}

/// Whether class `class_id` enforces (only classes 1 to 64 can).
#[inline(always)]
pub fn enforcing(class_id: u32) -> bool {
    if class_id == CLASS_NONE || class_id > TABLE_CLASSES {
        return false;
    }
    POLICY.get(policy_slot::ENFORCING).is_some_and(|m| *m & (1u64 << (class_id - 1)) != 0)
}

/// The IPv4 address an address stands for: itself, or the one in an IPv4-mapped
/// (::ffff:0:0/96) or NAT64 (64:ff9b::/96) IPv6 address.
#[inline(always)]
fn as_v4(family: u8, a: &[u8; 16]) -> Option<[u8; 4]> {
    if family == FAMILY_V4 {
        return Some([a[0], a[1], a[2], a[3]]);
    }
    let mapped = a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff;
    let nat64 = a[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];
    if mapped || nat64 { Some([a[12], a[13], a[14], a[15]]) } else { None }
}
