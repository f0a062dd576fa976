//! Integration tests against real servers (see tests/common for the harness). One test binary,
//! a module per suite: every extra binary costs a full link.

mod common;

mod aggregator;
mod dead_letters;
mod migrate;
mod pipeline;
mod recovery;
