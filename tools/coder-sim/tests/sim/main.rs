//! Integration tests for coder-sim (one test binary, several modules).

mod admin;
mod common;
mod contract;
mod faults;
mod fidelity;
mod lifecycle;
mod ratelimit;
mod scenarios;
mod tls;
mod watch;
