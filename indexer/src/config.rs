//! What the indexer follows and how: an optional TOML file (several deployments), overridden by flags and the
//! environment (one deployment). Every error names the key and the value at fault.

use std::{net::SocketAddr, path::{Path, PathBuf}, time::Duration};

use serde::Deserialize;
use subsettle_abi::Deployment;

use crate::{IndexerError, sync::SyncOptions};

/// Where `run` serves `/metrics` and `/healthz` unless told otherwise: loopback only, next to the keeper
/// engine's 127.0.0.1:9102.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9101);

/// The TOML configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Postgres URL.
    pub database_url: Option<String>,
    /// Milliseconds between polls when caught up.
    pub poll_interval_ms: Option<u64>,
    /// Blocks below the head treated as final when the node has no `finalized` tag.
    pub confirmations: Option<u64>,
    /// Ranges fetched at once during backfill.
    pub concurrency: Option<usize>,
    /// Largest eth_getLogs block range.
    pub max_range: Option<u64>,
    /// Address of the `/metrics` and `/healthz` server.
    pub metrics_addr: Option<String>,
    /// Deployments to follow.
    #[serde(default, rename = "deployment")]
    pub deployments: Vec<FileDeployment>,
}

/// One `[[deployment]]` of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDeployment {
    /// The deployment descriptor written by `subsettle-keeper deploy` (relative to the config file).
    pub file: PathBuf,
    /// JSON-RPC endpoint of its chain.
    pub rpc_url: String,
}

/// Values given on the command line or in the environment; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--database-url` / `DATABASE_URL`.
    pub database_url: Option<String>,
    /// `--deployment`.
    pub deployment: Option<PathBuf>,
    /// `--rpc-url`.
    pub rpc_url: Option<String>,
    /// `--poll-interval-ms`.
    pub poll_interval_ms: Option<u64>,
    /// `--confirmations`.
    pub confirmations: Option<u64>,
    /// `--concurrency`.
    pub concurrency: Option<usize>,
    /// `--max-range`.
    pub max_range: Option<u64>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<String>,
}

/// A followed deployment and its RPC.
#[derive(Debug, Clone)]
pub struct Followed {
    /// The deployment.
    pub deployment: Deployment,
    /// Its chain's JSON-RPC endpoint.
    pub rpc_url: String,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Postgres URL.
    pub database_url: String,
    /// Deployments to follow.
    pub deployments: Vec<Followed>,
    /// Loop settings.
    pub sync: SyncOptions,
    /// Largest eth_getLogs range.
    pub max_range: u64,
    /// Address of the `/metrics` and `/healthz` server of `run`.
    pub metrics_addr: SocketAddr,
}

fn bad(key: &str, value: impl std::fmt::Display, why: &str) -> IndexerError {
    IndexerError::Config(format!("{key} = `{value}`: {why}"))
}

impl Settings {
    /// Reads the file (if any) and applies the overrides.
    pub fn resolve(overrides: &Overrides) -> Result<Self, IndexerError> {
        let (file, base) = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad("--config", path.display(), &e.to_string()))?;
                let file: FileConfig =
                    toml::from_str(&text).map_err(|e| bad("--config", path.display(), &e.to_string()))?;
                (file, path.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (FileConfig::default(), PathBuf::new()),
        };

        let database_url = overrides
            .database_url
            .clone()
            .or(file.database_url)
            .ok_or_else(|| IndexerError::Config("database_url is not set (flag --database-url, env DATABASE_URL, or the config file)".into()))?;

        let mut deployments = Vec::new();
        match (&overrides.deployment, &overrides.rpc_url) {
            (Some(path), Some(rpc_url)) => deployments.push(Followed { deployment: load(path, "--deployment")?, rpc_url: rpc_url.clone() }),
            (Some(path), None) => return Err(bad("--deployment", path.display(), "needs --rpc-url too")),
            (None, Some(url)) if file.deployments.is_empty() => return Err(bad("--rpc-url", url, "needs --deployment too")),
            _ => {}
        }
        if deployments.is_empty() {
            for entry in file.deployments {
                let path = base.join(&entry.file);
                deployments.push(Followed { deployment: load(&path, "deployment.file")?, rpc_url: entry.rpc_url });
            }
        }
        if deployments.is_empty() {
            return Err(IndexerError::Config("no deployment to follow: pass --deployment and --rpc-url, or list [[deployment]] in --config".into()));
        }
        for followed in &deployments {
            if url::Url::parse(&followed.rpc_url).is_err() {
                return Err(bad("rpc_url", &followed.rpc_url, "is not a URL"));
            }
        }

        let poll_interval_ms = overrides.poll_interval_ms.or(file.poll_interval_ms).unwrap_or(1_000);
        if poll_interval_ms == 0 {
            return Err(bad("poll_interval_ms", 0, "must be at least 1"));
        }
        let concurrency = overrides.concurrency.or(file.concurrency).unwrap_or(4);
        if concurrency == 0 || concurrency > 64 {
            return Err(bad("concurrency", concurrency, "must be between 1 and 64"));
        }
        let max_range = overrides.max_range.or(file.max_range).unwrap_or(5_000);
        if max_range == 0 {
            return Err(bad("max_range", 0, "must be at least 1"));
        }
        let metrics_addr = match overrides.metrics_addr.clone().or(file.metrics_addr) {
            Some(text) => {
                text.parse().map_err(|_| bad("metrics_addr", &text, "is not an address like 127.0.0.1:9101"))?
            }
            None => DEFAULT_METRICS_ADDR,
        };
        Ok(Self {
            database_url,
            deployments,
            sync: SyncOptions {
                poll_interval: Duration::from_millis(poll_interval_ms),
                confirmations: overrides.confirmations.or(file.confirmations).unwrap_or(64),
                concurrency,
            },
            max_range,
            metrics_addr,
        })
    }
}

fn load(path: &Path, key: &str) -> Result<Deployment, IndexerError> {
    Deployment::load(path).map_err(|e| IndexerError::Config(format!("{key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = r#"{"chain_id":31337,"token":"0x1111111111111111111111111111111111111111","subscriptions":"0x2222222222222222222222222222222222222222","escrow":"0x3333333333333333333333333333333333333333","start_block":0}"#;

    fn dir_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deployment.json"), DEPLOYMENT).unwrap();
        std::fs::write(dir.path().join("indexer.toml"), config).unwrap();
        dir
    }

    #[test]
    fn reads_deployments_from_the_file_relative_to_it() {
        let dir = dir_with(
            "database_url = \"postgres://x@localhost/db\"\nmax_range = 100\n[[deployment]]\nfile = \"deployment.json\"\nrpc_url = \"http://127.0.0.1:8545\"\n",
        );
        let settings = Settings::resolve(&Overrides { config: Some(dir.path().join("indexer.toml")), ..Overrides::default() }).unwrap();
        assert_eq!(settings.deployments.len(), 1);
        assert_eq!(settings.deployments[0].deployment.chain_id, 31337);
        assert_eq!(settings.max_range, 100);
    }

    #[test]
    fn names_an_unknown_key() {
        let dir = dir_with("databse_url = \"x\"\n");
        let err = Settings::resolve(&Overrides { config: Some(dir.path().join("indexer.toml")), ..Overrides::default() }).unwrap_err();
        assert!(err.to_string().contains("databse_url"), "{err}");
    }

    #[test]
    fn names_a_bad_value() {
        let dir = dir_with("");
        let overrides = Overrides {
            database_url: Some("postgres://x@localhost/db".into()),
            deployment: Some(dir.path().join("deployment.json")),
            rpc_url: Some("not a url".into()),
            ..Overrides::default()
        };
        let err = Settings::resolve(&overrides).unwrap_err().to_string();
        assert!(err.contains("rpc_url") && err.contains("not a url"), "{err}");
        let overrides = Overrides { rpc_url: Some("http://127.0.0.1:8545".into()), concurrency: Some(0), ..overrides };
        let err = Settings::resolve(&overrides).unwrap_err().to_string();
        assert!(err.contains("concurrency"), "{err}");
    }

    #[test]
    fn metrics_are_served_on_a_default_address_unless_one_is_given() {
        let dir = dir_with("");
        let overrides = Overrides {
            database_url: Some("postgres://x@localhost/db".into()),
            deployment: Some(dir.path().join("deployment.json")),
            rpc_url: Some("http://127.0.0.1:8545".into()),
            ..Overrides::default()
        };
        let settings = Settings::resolve(&overrides).unwrap();
        assert_eq!(settings.metrics_addr.to_string(), "127.0.0.1:9101");
        let overrides = Overrides { metrics_addr: Some("0.0.0.0:9200".into()), ..overrides };
        assert_eq!(Settings::resolve(&overrides).unwrap().metrics_addr.to_string(), "0.0.0.0:9200");
    }

    #[test]
    fn requires_a_database_url() {
        let err = Settings::resolve(&Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("database_url"), "{err}");
    }
}
