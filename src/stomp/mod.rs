//! STOMP 1.0/1.1/1.2 wire format.
pub mod frame;
