//! The store conformance suite, run against [`DynamoStore`] on the local AWS emulator (a fresh
//! table per case). DynamoDB keeps transition events but logs deferral notes instead of storing
//! them (the write budget), so it declares `FULL_AUDIT_TRAIL = false`.

mod common;

use taskexec_aws::DynamoStore;

taskexec_core::conformance_tests!(common::fresh_store, capabilities = DynamoStore);
