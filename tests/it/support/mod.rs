//! The integration tests' one helper module.
//!
//! - [`app`]: an engine over a real PostgreSQL database (one per test, from
//!   `#[sqlx::test]`), the simulated backend, a runner to drive it by hand,
//!   and the real router called in-process.
//! - [`process`]: the real `executord` binary as processes on a private
//!   PostgreSQL cluster, the one raw HTTP/1.1 client every test over a real
//!   socket uses, and the database checks every crash test ends with.

pub mod app;
pub mod process;
