//! Errors of the AWS adapters. An SDK error is kept whole as the `#[source]` (never flattened into
//! a string), together with the operation that failed; the ports see it as
//! [`StoreError::Backend`].

use std::error::Error as StdError;

use taskexec_core::error::StoreError;

/// A boxed error from an AWS SDK call.
pub type SdkSource = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong in an AWS adapter.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// A DynamoDB call failed (throttling, network, validation, a missing table, ...).
    #[error("DynamoDB {operation} failed")]
    Dynamo {
        /// The API operation (`UpdateItem`, `Query`, ...).
        operation: &'static str,
        /// The SDK's error.
        #[source]
        source: SdkSource,
    },
    /// An SQS call failed.
    #[error("SQS {operation} failed")]
    Sqs {
        /// The API operation (`SendMessageBatch`, `ReceiveMessage`, ...).
        operation: &'static str,
        /// The SDK's error.
        #[source]
        source: SdkSource,
    },
    /// A Lambda control-plane call failed (event source mappings).
    #[error("Lambda {operation} failed")]
    Lambda {
        /// The API operation (`UpdateEventSourceMapping`, ...).
        operation: &'static str,
        /// The SDK's error.
        #[source]
        source: SdkSource,
    },
    /// Some entries of an SQS batch were rejected.
    #[error("SQS {operation}: {failed} of the batch's entries were rejected (first: {code})")]
    SqsBatch {
        /// The API operation.
        operation: &'static str,
        /// How many entries failed.
        failed: usize,
        /// The first failure's error code.
        code: String,
    },
    /// An item or message could not be mapped to or from its Rust type.
    #[error("could not map {what}")]
    Mapping {
        /// Which item or message.
        what: String,
        /// The serde error.
        #[source]
        source: SdkSource,
    },
    /// An item lacks something every item of its kind has.
    #[error("corrupt item {key}: {problem}")]
    Corrupt {
        /// The item's key.
        key: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Conditional writes on one item kept losing to concurrent writers.
    #[error("item {key} kept changing under {attempts} conditional writes")]
    Contended {
        /// The item's key.
        key: String,
        /// Writes tried.
        attempts: u32,
    },
    /// A request could not be built (a required field was missing).
    #[error("could not build a {what} request")]
    Build {
        /// Which request.
        what: &'static str,
        /// The builder's error.
        #[source]
        source: SdkSource,
    },
}

impl AwsError {
    /// A failed DynamoDB call.
    pub fn dynamo(operation: &'static str, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Dynamo { operation, source: Box::new(source) }
    }

    /// A failed SQS call.
    pub fn sqs(operation: &'static str, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Sqs { operation, source: Box::new(source) }
    }

    /// A failed Lambda call.
    pub fn lambda(operation: &'static str, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Lambda { operation, source: Box::new(source) }
    }

    /// A mapping failure.
    pub fn mapping(what: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Mapping { what: what.into(), source: Box::new(source) }
    }

    /// A request builder failure.
    pub fn build(what: &'static str, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Build { what, source: Box::new(source) }
    }
}

impl From<AwsError> for StoreError {
    fn from(e: AwsError) -> Self {
        StoreError::backend(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_cause_as_source() {
        let cause = std::io::Error::other("connection reset");
        let store: StoreError = AwsError::dynamo("UpdateItem", cause).into();
        let aws = store.source().expect("backend error has a source");
        assert_eq!(aws.to_string(), "DynamoDB UpdateItem failed");
        assert_eq!(aws.source().expect("SDK error kept").to_string(), "connection reset");
    }
}
