//! One file per group of commands.

pub mod check;
pub mod demo;
pub mod engine;
pub mod sandbox;
