//! The keeper's Postgres: its own schema `keeper` (migrations in `keeper/migrations`) and read-only access to the
//! indexer's schema `chain`.

use std::borrow::Cow;

use alloy::primitives::U256;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::KeeperError;

/// Connects and applies the migrations of schema `keeper`, tracked apart from the indexer's.
pub async fn connect(database_url: &str, max_connections: u32) -> Result<PgPool, KeeperError> {
    let pool = PgPoolOptions::new().max_connections(max_connections).connect(database_url).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Connects without migrating, in sessions where every transaction is read-only: for commands that must not
/// write (`reconcile`). Postgres refuses any write made through this pool.
pub async fn connect_read_only(database_url: &str, max_connections: u32) -> Result<PgPool, KeeperError> {
    let options: PgConnectOptions = database_url.parse()?;
    let options = options.options([("default_transaction_read_only", "on")]);
    Ok(PgPoolOptions::new().max_connections(max_connections).connect_with(options).await?)
}

/// Applies the migrations of schema `keeper`.
pub async fn migrate(pool: &PgPool) -> Result<(), KeeperError> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.create_schema("keeper");
    migrator.dangerous_set_table_name(Cow::Borrowed("keeper._sqlx_migrations"));
    migrator.run(pool).await?;
    Ok(())
}

/// The keeper's tables serve one deployment, and it reads the indexer's tables by chain id: refuses a database
/// that holds another deployment on the same chain, or keeper data of another chain, rather than mixing their money.
pub async fn check_one_deployment(pool: &PgPool, deployment: &subsettle_abi::Deployment) -> Result<(), KeeperError> {
    let indexed: Option<bool> = sqlx::query_scalar("SELECT to_regclass('chain.deployments') IS NOT NULL").fetch_one(pool).await?;
    if indexed == Some(true) {
        let others: Vec<Vec<u8>> = sqlx::query_scalar("SELECT subscriptions FROM chain.deployments WHERE chain_id = $1 AND subscriptions <> $2")
            .bind(deployment.chain_id as i64)
            .bind(deployment.subscriptions.as_slice())
            .fetch_all(pool)
            .await?;
        if let Some(other) = others.first() {
            return Err(KeeperError::Invalid {
                field: "deployment".into(),
                reason: format!(
                    "this database also indexes the deployment with Subscriptions 0x{} on chain {}; the keeper serves one deployment per database",
                    alloy::hex::encode(other),
                    deployment.chain_id
                ),
            });
        }
    }
    let foreign: Option<i64> = sqlx::query_scalar("SELECT chain_id FROM keeper.period_closes WHERE chain_id <> $1 LIMIT 1")
        .bind(deployment.chain_id as i64)
        .fetch_optional(pool)
        .await?;
    if let Some(chain) = foreign {
        return Err(KeeperError::Invalid {
            field: "deployment".into(),
            reason: format!("this database holds the keeper's books of chain {chain}, not {}; the keeper serves one deployment per database", deployment.chain_id),
        });
    }
    Ok(())
}

/// A NUMERIC(78,0) read as text, as an integer.
pub fn numeric_u128(text: &str, what: &'static str) -> Result<u128, KeeperError> {
    text.parse().map_err(|_| KeeperError::ChainData(format!("{what} `{text}` is not a base-unit amount")))
}

/// A NUMERIC(78,0) read as text, as a u64 id.
pub fn numeric_u64(text: &str, what: &'static str) -> Result<u64, KeeperError> {
    text.parse().map_err(|_| KeeperError::ChainData(format!("{what} `{text}` is not a 64-bit integer")))
}

/// A uint256 as the text Postgres takes for NUMERIC(78,0).
pub fn numeric_text(value: U256) -> String {
    value.to_string()
}
