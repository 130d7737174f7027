//! The store conformance suite, run against [`DynamoStore`] on the local AWS emulator (a fresh
//! table per case). DynamoDB keeps transition events but logs deferral notes instead of storing
//! them (the write budget), so it declares `FULL_AUDIT_TRAIL = false`.
//!
//! moto does not make a conditional write atomic against concurrent writers (seen: two of eight
//! racing finishes with the same epoch both applied), so the two concurrency cases are not
//! generated here; `dynamodb_local.rs` runs them, with every other case, against DynamoDB Local,
//! which is faithful.

mod common;

use taskexec_aws::DynamoStore;

taskexec_core::conformance_tests!(common::fresh_store, capabilities = DynamoStore, without_concurrency);
