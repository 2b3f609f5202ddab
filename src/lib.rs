//! autopatch: makes prebuilt binaries of conda and pip environments run on NixOS by rewriting
//! their ELF interpreter and run path.

pub mod elf;
pub mod apply;
pub mod cli;
pub mod scan;
