//! taskexec-core: the domain of taskexec — the JSON contract, the task life cycle, the ports the
//! engine is written against, the policies (retry, breaker, limits, priority) and the engine with
//! its one decision function. No AWS, no HTTP client: adapters live in their own crates.
#![warn(missing_docs)]

pub mod breaker;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod lifecycle;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod ports;
pub mod provider;
pub mod rate;
pub mod retry;
pub mod routing;
pub mod runner;
pub mod schedule;
pub mod task;
pub mod time;
pub mod validate;
