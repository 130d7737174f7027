//! The store conformance suite, run against the in-memory store.

use taskexec_core::memory::MemoryStore;

taskexec_core::conformance_tests!(|| async { MemoryStore::default() });
