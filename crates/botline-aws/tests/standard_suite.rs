//! The shared backend suite on a standard queue of the moto server, with leases and backoffs in
//! whole seconds, as SQS counts them (see `common::whole_seconds`).

mod common;

botline_core::backend_suite!(common::standard_backend, config = common::whole_seconds);
