//! Offline handoff: `export` writes a group's unfinished messages to one
//! self-checking file, `import` checks such a file whole and pushes its
//! messages into a store.

pub mod export;
pub mod format;
pub mod import;
