//! autopatch: makes prebuilt binaries of conda and pip environments run on NixOS by rewriting
//! their ELF interpreter and run path.

pub mod apply;
pub mod check;
pub mod cli;
pub mod conda;
pub mod config;
pub mod elf;
mod fastmap;
pub mod fix;
pub mod journal;
pub mod pip;
pub mod plan;
pub mod resolve;
pub mod scan;
pub mod store;
pub mod watch;
