//! Integration tests against real servers (see tests/common for the harness). One test binary,
//! a module per suite: every extra binary costs a full link.

// Tests hold `common::heavy()` (a std mutex) across awaits on purpose: it serializes the tests
// that load the shared machine, and no other task ever contends for it within a test.
#![allow(clippy::await_holding_lock)]

mod common;

mod aggregator;
mod chaos;
mod cli;
mod console;
mod dead_letters;
mod demo;
mod liveness;
mod migrate;
mod ops;
mod pipeline;
mod producer;
mod recovery;
mod supervision;
mod tls;
