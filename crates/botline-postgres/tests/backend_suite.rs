//! The shared backend suite against a real Postgres: a fresh database per test, dropped when the
//! test ends (see `common`).

mod common;

botline_core::backend_suite!(common::fresh_backend);
