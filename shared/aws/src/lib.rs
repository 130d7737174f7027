//! taskexec-aws: the adapters of the serverless shape. [`DynamoStore`] implements the task,
//! control and breaker ports over one DynamoDB table; [`SqsQueue`] the work queue over three
//! SQS queues (one per priority); [`EmfSink`] the metrics sink as CloudWatch Embedded Metric
//! Format lines on stdout; [`EventSourceMappings`] the worker's event source mappings, whose
//! weights the sweeper rebalances; [`secrets`] reads the provider keys that deployments name by
//! reference. Clients and configuration are passed in: nothing here reads the environment.
#![warn(missing_docs)]

mod backend;
mod dynamo;
mod emf;
mod error;
mod lambda;
mod mappings;
pub mod secrets;
pub use lambda::create_queues;
mod sqs;
pub mod xray;

pub use backend::{AwsBackend, AwsEngine, AwsWorker, BackendSettings};
pub use dynamo::{
    ConsumedWrites, DynamoConfig, DynamoLimiter, DynamoStore, DynamoWindow, LimiterSettings, OverdueTask, RunCounts,
    create_table, item_size, write_units,
};
pub use emf::{EmfSink, NAMESPACE, emf_line};
pub use error::AwsError;
pub use mappings::EventSourceMappings;
pub use sqs::SqsQueue;
