//! Protocol tests over real HTTP: the gateway in-process on 127.0.0.1:0, in front of a real
//! `redis-server` started per test (the testkit's `RedisServer` fixture).

// Test helpers outside #[test] functions may panic on setup failures: that is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod busy_kit;
mod common;

mod auth_limits;
mod breaker12_sync_token;
mod breaker15_busy;
mod breaker16_busy;
mod breaker17_busy;
mod breaker19_busy;
mod breaker20_busy;
mod busy;
mod faults;
mod forms;
mod limits;
mod logging;
mod numbers;
mod official_client;
mod reconnect;
mod scripts;
mod security;
