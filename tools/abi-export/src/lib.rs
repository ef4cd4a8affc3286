//! Compiles `contracts/` with the pinned solc (through `foundry-compilers`, pointed at `scripts/solc`) using the
//! settings of `foundry.toml`, and renders each deployable contract's ABI and bytecode as `abi/<Name>.json`.
//!
//! The Rust crates compile against those files only, so building Rust never needs solc; [`check`] fails when the
//! committed files differ from what the sources compile to.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use foundry_compilers::{
    artifacts::{
        BytecodeHash, EvmVersion, Optimizer, Remapping, Settings, SettingsMetadata, SolcInput,
        SolcLanguage, Source, Sources, output_selection::OutputSelection,
    },
    solc::Solc,
};

/// Why the export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// `foundry.toml` could not be read or lacks a setting the export needs.
    #[error("foundry.toml: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file in question.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// solc could not be run.
    #[error("solc: {0}")]
    Solc(#[from] foundry_compilers::error::SolcError),
    /// The sources do not compile.
    #[error("the contracts do not compile:\n{0}")]
    Compile(String),
}

/// The compiler settings the export shares with forge, read from `[profile.default]` of `foundry.toml`.
#[derive(Debug, Clone)]
pub struct Profile {
    src: PathBuf,
    solc: PathBuf,
    remappings: Vec<Remapping>,
    optimizer_runs: Option<usize>,
    evm_version: EvmVersion,
    via_ir: bool,
    bytecode_hash: BytecodeHash,
    cbor_metadata: bool,
}

impl Profile {
    /// Reads the profile from `<root>/foundry.toml`.
    pub fn load(root: &Path) -> Result<Self, ExportError> {
        let path = root.join("foundry.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ExportError::Io { path, source })?;
        let doc: toml::Table = text.parse().map_err(|e| ExportError::Config(format!("not valid TOML: {e}")))?;
        let profile = doc
            .get("profile")
            .and_then(|p| p.get("default"))
            .and_then(|p| p.as_table())
            .ok_or_else(|| ExportError::Config("missing [profile.default]".into()))?;
        let string = |key: &str| -> Result<String, ExportError> {
            profile
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| ExportError::Config(format!("[profile.default] needs a string `{key}`")))
        };
        let boolean = |key: &str, default: bool| profile.get(key).and_then(|v| v.as_bool()).unwrap_or(default);
        let remappings = profile
            .get("remappings")
            .and_then(|v| v.as_array())
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        let text = item.as_str().unwrap_or_default();
                        text.parse::<Remapping>()
                            .map_err(|e| ExportError::Config(format!("remapping `{text}`: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let optimizer_runs = if boolean("optimizer", false) {
            let runs = profile.get("optimizer_runs").and_then(|v| v.as_integer()).unwrap_or(200);
            Some(usize::try_from(runs).map_err(|_| ExportError::Config(format!("optimizer_runs {runs}")))?)
        } else {
            None
        };
        let evm_version = string("evm_version")?;
        let bytecode_hash = string("bytecode_hash").unwrap_or_else(|_| "ipfs".into());
        Ok(Self {
            src: PathBuf::from(string("src")?),
            solc: PathBuf::from(string("solc")?),
            remappings,
            optimizer_runs,
            evm_version: evm_version
                .parse()
                .map_err(|e| ExportError::Config(format!("evm_version `{evm_version}`: {e}")))?,
            via_ir: boolean("via_ir", false),
            bytecode_hash: bytecode_hash
                .parse()
                .map_err(|e| ExportError::Config(format!("bytecode_hash `{bytecode_hash}`: {e}")))?,
            cbor_metadata: boolean("cbor_metadata", true),
        })
    }

    fn settings(&self) -> Settings {
        let mut settings = Settings::new(OutputSelection::common_output_selection([
            "abi".to_string(),
            "evm.bytecode.object".to_string(),
            "evm.deployedBytecode.object".to_string(),
        ]));
        settings.remappings = self.remappings.clone();
        settings.optimizer = match self.optimizer_runs {
            Some(runs) => Optimizer { enabled: Some(true), runs: Some(runs), details: None },
            None => Optimizer { enabled: Some(false), runs: None, details: None },
        };
        settings.evm_version = Some(self.evm_version);
        settings.via_ir = self.via_ir.then_some(true);
        settings.metadata = Some(SettingsMetadata::new(self.bytecode_hash, self.cbor_metadata));
        settings
    }
}

/// One exported contract: its file name under `abi/` and the JSON it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The contract's name; the file is `abi/<name>.json`.
    pub name: String,
    /// Pretty JSON with `abi`, `bytecode` and `deployedBytecode`, ending in a newline.
    pub json: String,
}

/// Compiles the sources under the profile's `src` and returns every deployable contract (one with creation
/// code and an ABI; interfaces and abstract contracts have no code, internal libraries no ABI), sorted by name.
pub fn compile(root: &Path) -> Result<Vec<Artifact>, ExportError> {
    let profile = Profile::load(root)?;
    let mut solc = Solc::new(root.join(&profile.solc))?;
    solc.base_path = Some(root.to_path_buf());
    solc.allow_paths.insert(root.to_path_buf());

    let sources = read_sources(root, &profile.src)?;
    let input = SolcInput { language: SolcLanguage::Solidity, sources, settings: profile.settings() };
    let output = solc.compile(&input)?;
    if output.has_error() {
        let messages: Vec<String> = output
            .errors
            .iter()
            .filter(|e| e.severity.is_error())
            .map(|e| e.formatted_message.clone().unwrap_or_else(|| e.message.clone()))
            .collect();
        return Err(ExportError::Compile(messages.join("\n")));
    }

    let mut artifacts = BTreeMap::new();
    for (file, contracts) in output.contracts {
        if !file.starts_with(&profile.src) {
            continue; // dependencies (OpenZeppelin) are compiled but not exported
        }
        for (name, contract) in contracts {
            let evm = contract.evm.as_ref();
            let bytecode = evm.and_then(|e| e.bytecode.as_ref()).and_then(|b| b.object.as_bytes().cloned());
            let Some(bytecode) = bytecode.filter(|b| !b.is_empty()) else { continue };
            // A library of internal functions (contracts/src/libraries) has bytecode but no ABI: it is inlined
            // into the contracts that use it and never deployed, so there is nothing to bind.
            if contract.abi.as_ref().is_none_or(|abi| abi.is_empty()) {
                continue;
            }
            let deployed = evm
                .and_then(|e| e.deployed_bytecode.as_ref())
                .and_then(|d| d.bytecode.as_ref())
                .and_then(|b| b.object.as_bytes().cloned())
                .unwrap_or_default();
            let json = serde_json::json!({
                "abi": contract.abi.unwrap_or_default(),
                "bytecode": bytecode,
                "deployedBytecode": deployed,
            });
            let text = serde_json::to_string_pretty(&json).expect("artifact JSON serializes") + "\n";
            if artifacts.insert(name.clone(), Artifact { name: name.clone(), json: text }).is_some() {
                return Err(ExportError::Compile(format!("two deployable contracts are named {name}")));
            }
        }
    }
    Ok(artifacts.into_values().collect())
}

/// Reads every `.sol` file under `<root>/<src>`, keyed by its path relative to `root` (as forge names them).
fn read_sources(root: &Path, src: &Path) -> Result<Sources, ExportError> {
    let mut sources = Sources::new();
    let mut stack = vec![root.join(src)];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| ExportError::Io { path: dir.clone(), source })?;
        for entry in entries {
            let path = entry.map_err(|source| ExportError::Io { path: dir.clone(), source })?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "sol") {
                let relative = path.strip_prefix(root).expect("walked from root").to_path_buf();
                let source = Source::read(&path).map_err(|e| ExportError::Compile(e.to_string()))?;
                sources.insert(relative, source);
            }
        }
    }
    Ok(sources)
}

/// The JSON files currently in `abi_dir`, by contract name.
fn existing(abi_dir: &Path) -> Result<BTreeMap<String, String>, ExportError> {
    let io = |source| ExportError::Io { path: abi_dir.to_path_buf(), source };
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(abi_dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let name = path.file_stem().expect("has an extension").to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).map_err(|source| ExportError::Io { path, source })?;
            files.insert(name, text);
        }
    }
    Ok(files)
}

/// What differs between `abi/` and the compiled sources.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Staleness {
    /// Contracts whose file is missing from `abi/`.
    pub missing: Vec<String>,
    /// Contracts whose file differs from the compiled output.
    pub changed: Vec<String>,
    /// Files in `abi/` for which no deployable contract exists any more.
    pub orphaned: Vec<String>,
}

impl Staleness {
    /// Whether `abi/` matches the sources exactly.
    pub fn is_fresh(&self) -> bool {
        self.missing.is_empty() && self.changed.is_empty() && self.orphaned.is_empty()
    }
}

/// Compares `artifacts` against the files in `abi_dir`.
pub fn compare(artifacts: &[Artifact], abi_dir: &Path) -> Result<Staleness, ExportError> {
    let mut on_disk = existing(abi_dir)?;
    let mut staleness = Staleness::default();
    for artifact in artifacts {
        match on_disk.remove(&artifact.name) {
            None => staleness.missing.push(artifact.name.clone()),
            Some(text) if text != artifact.json => staleness.changed.push(artifact.name.clone()),
            Some(_) => {}
        }
    }
    staleness.orphaned = on_disk.into_keys().collect();
    Ok(staleness)
}

/// Writes `artifacts` to `abi_dir` and removes orphaned JSON files, so the directory equals the sources.
pub fn write(artifacts: &[Artifact], abi_dir: &Path) -> Result<(), ExportError> {
    for orphan in compare(artifacts, abi_dir)?.orphaned {
        let path = abi_dir.join(format!("{orphan}.json"));
        std::fs::remove_file(&path).map_err(|source| ExportError::Io { path, source })?;
    }
    for artifact in artifacts {
        let path = abi_dir.join(format!("{}.json", artifact.name));
        std::fs::write(&path, &artifact.json).map_err(|source| ExportError::Io { path, source })?;
    }
    Ok(())
}

/// The repository root, found from this crate's location (`tools/abi-export`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root exists")
}
