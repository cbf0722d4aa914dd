//! The service's pure rules (`src/domain`), compiled on their own for the fuzzers: they perform
//! no I/O and need none of the service's adapters.

#[path = "../../src/domain/mod.rs"]
pub mod domain;
