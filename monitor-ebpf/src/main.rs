//! The egress-monitor kernel programs. Those attached to the cgroup v2 root observe only:
//! they allow everything. `enforce` holds the only programs that refuse, attached to the
//! cgroups of enforcing classes alone. One file per hook family; `maps` holds every map the
//! agent reads or fills.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod atomic;
mod connect;
mod dns;
mod egress;
mod enforce;
mod lifecycle;
mod maps;
mod sock;
mod verdict;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
