//! Integration tests against real servers (see tests/common for the harness). One test binary,
//! a module per suite: every extra binary costs a full link.

mod common;

mod aggregator;
mod migrate;
mod pipeline;
