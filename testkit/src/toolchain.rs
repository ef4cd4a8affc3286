//! Locating the tools the harness starts: the pinned Foundry binaries under `node_modules/` and the Postgres
//! server binaries of the machine.

use std::path::{Path, PathBuf};

use crate::HarnessError;

/// The repository root (the directory holding `Cargo.toml` of the workspace and `node_modules/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives one level below the root").to_path_buf()
}

/// The real binary of a Foundry tool (`anvil`, `forge`, `cast`) installed by `npm ci`.
///
/// `node_modules/.bin/<tool>` is a Node wrapper that spawns the binary as its own child; killing the wrapper
/// would orphan the node, so the harness starts the platform package's binary directly.
pub fn foundry_bin(tool: &'static str) -> Result<PathBuf, HarnessError> {
    let platform = match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => "linux-amd64",
        ("linux", "aarch64") => "linux-arm64",
        ("macos", "x86_64") => "darwin-amd64",
        ("macos", "aarch64") => "darwin-arm64",
        (os, arch) => {
            return Err(HarnessError::MissingTool {
                tool,
                looked: format!("no Foundry npm package for {os}/{arch}"),
                fix: "run on linux or macOS (x86_64 or arm64)",
            });
        }
    };
    let path = repo_root().join(format!("node_modules/@foundry-rs/{tool}-{platform}/bin/{tool}"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::MissingTool {
            tool,
            looked: path.display().to_string(),
            fix: "run scripts/bootstrap (it runs `npm ci`)",
        })
    }
}

/// The directory holding `initdb`, `postgres` and `pg_isready`: `$PG_BIN` when set, else the first directory on
/// `PATH` holding all three, else the newest `/usr/lib/postgresql/<version>/bin`.
pub fn postgres_bin_dir() -> Result<PathBuf, HarnessError> {
    let has_server = |dir: &Path| ["initdb", "postgres", "pg_isready"].iter().all(|tool| dir.join(tool).is_file());
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return if has_server(&dir) { Ok(dir) } else { Err(missing_postgres(format!("PG_BIN={}", dir.display()))) };
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).filter(|dir| has_server(dir)).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().next() {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| missing_postgres("PATH and /usr/lib/postgresql/*/bin".into()))
}

fn missing_postgres(looked: String) -> HarnessError {
    HarnessError::MissingTool {
        tool: "PostgreSQL server (initdb, postgres)",
        looked,
        fix: "install it with `apt-get install -y postgresql`, or set DATABASE_URL to a server you own",
    }
}
