//! taskexec-lambda: the Lambda glue of the serverless shape, written over small traits so that it
//! is tested without AWS and hosted both by the Lambda functions and by `taskexec serve --backend
//! aws`'s local event-source poller:
//! - [`worker`]: an SQS batch in, the engine's decision per message, partial batch failures out;
//! - [`dlq`]: dead-lettered messages analysed, re-queued or finalised;
//! - [`sweeper`]: overdue tasks re-sent, queue weights rebalanced;
//! - [`poller`]: a local event-source mapping feeding SQS batches to the worker as Lambda would;
//! - [`window`]: the breaker outcome counters every worker shares.
#![warn(missing_docs)]

pub mod actions;
pub mod dlq;
pub mod env;
pub mod executor;
pub mod poller;
pub mod sweeper;
pub mod window;
pub mod worker;
