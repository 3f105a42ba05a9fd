//! The shared backend suite on a FIFO queue (grouped by chat) of the moto server, with leases
//! and backoffs in whole seconds, as SQS counts them (see `common::whole_seconds`).

mod common;

botline_core::backend_suite!(common::fifo_backend, config = common::whole_seconds);
