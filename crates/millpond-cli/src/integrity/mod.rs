//! The integrity commands, verify and repair, and the walk over a
//! segment's frames they share with `dump`. They read the store's files
//! with the engine's public codecs (`millpond::log::{frame, segment,
//! index}`, `millpond::group::{checkpoint, journal}`) and never open the
//! store through the engine, whose recovery would change what they look at.

pub mod repair;
pub mod verify;
pub mod walk;
