//! The test harness every integration and end-to-end test uses: real services, isolated per test, gone after.
//!
//! - [`chain`]: a real anvil node on a free port, one per test, with its funded development keys.
//! - [`postgres`]: a throwaway Postgres cluster (or the server in `DATABASE_URL`) and one fresh database per test.
//! - [`usdc`]: Circle's USDC deployed on a test chain as Circle deploys it, each role on its own account.
//! - [`toolchain`]: where the repository's pinned tools (anvil, the Postgres binaries) live.
//!
//! Everything is stopped and removed on drop, which also runs when a test panics. Nothing binds a fixed port, so
//! tests run in parallel.

pub mod chain;
pub mod postgres;
pub mod toolchain;
pub mod usdc;

pub use chain::TestChain;
pub use postgres::TestDatabase;

/// Why the harness could not provide a service. The message says what to install or run.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A tool the harness needs is not installed.
    #[error("{tool} not found ({looked}); {fix}")]
    MissingTool {
        /// The tool.
        tool: &'static str,
        /// Where the harness looked.
        looked: String,
        /// What to run to install it.
        fix: &'static str,
    },
    /// A service failed to start.
    #[error("{service} failed to start: {reason}")]
    Start {
        /// The service (anvil, postgres).
        service: &'static str,
        /// What went wrong, with the service's own log where there is one.
        reason: String,
    },
    /// A database command failed.
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl HarnessError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
