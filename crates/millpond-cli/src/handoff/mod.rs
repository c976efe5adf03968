//! Offline handoff: `export` writes a group's unfinished messages to one
//! self-checking file, `import` checks such a file whole and pushes its
//! messages into a store, once: `resume` keeps in the store how far an
//! import got, so that an interrupted one finishes when run again.

pub mod export;
pub mod format;
pub mod import;
pub mod resume;
