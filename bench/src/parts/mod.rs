//! The parts of a run, one module each; each returns its figures and leaves
//! the report to [`crate::report`].

pub mod ceiling;
pub mod durability;
pub mod scaleout;
pub mod throughput;
pub mod waiting;
