//! The egress-monitor kernel programs. Observe mode only: every program allows everything.
//! One file per hook family; `maps` holds every map the agent reads or fills.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod atomic;
mod connect;
mod egress;
mod lifecycle;
mod maps;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
