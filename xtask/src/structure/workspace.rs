//! The crates of the workspace, from `cargo metadata`: every library and binary target of a
//! member whose root file is under the member's `src/`.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::step::cargo;

/// One crate: a library or binary target of a workspace member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrateTarget {
    pub package: String,
    /// `None` for the library, the binary's name for a binary.
    pub binary: Option<String>,
    pub root: PathBuf,
}

impl CrateTarget {
    /// Whether `name` picks this crate: the package's name, with or without its `natter-`.
    pub fn is_named(&self, name: &str) -> bool {
        self.package == name || self.package.strip_prefix("natter-") == Some(name)
    }
}

impl fmt::Display for CrateTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.binary {
            None => write!(f, "{} (lib)", self.package),
            Some(binary) => write!(f, "{} (bin {binary})", self.package),
        }
    }
}

/// The workspace's root folder and its crates, libraries before binaries, by package name.
pub fn crates() -> anyhow::Result<(PathBuf, Vec<CrateTarget>)> {
    let output = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata =
        String::from_utf8(output.stdout).context("`cargo metadata` printed non-UTF-8")?;
    from_metadata(&metadata)
}

#[derive(Deserialize)]
struct Metadata {
    workspace_root: PathBuf,
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    manifest_path: PathBuf,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
    src_path: PathBuf,
}

const LIBRARY_KINDS: &[&str] = &["lib", "rlib", "dylib", "cdylib", "staticlib", "proc-macro"];

fn from_metadata(json: &str) -> anyhow::Result<(PathBuf, Vec<CrateTarget>)> {
    let metadata: Metadata = serde_json::from_str(json).context("reading `cargo metadata`")?;
    let mut crates = Vec::new();
    for package in metadata.packages {
        let src = package
            .manifest_path
            .parent()
            .unwrap_or(Path::new(""))
            .join("src");
        for target in package.targets {
            if !target.src_path.starts_with(&src) {
                continue;
            }
            let binary = if target.kind.iter().any(|kind| kind == "bin") {
                Some(target.name)
            } else if target
                .kind
                .iter()
                .any(|kind| LIBRARY_KINDS.contains(&kind.as_str()))
            {
                None
            } else {
                continue;
            };
            crates.push(CrateTarget {
                package: package.name.clone(),
                binary,
                root: target.src_path,
            });
        }
    }
    crates.sort_by(|a, b| (&a.package, &a.binary).cmp(&(&b.package, &b.binary)));
    Ok((metadata.workspace_root, crates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_library_and_binary_targets_under_src_only() {
        let json = r#"{
            "workspace_root": "/w",
            "packages": [{
                "name": "natter-gateway",
                "manifest_path": "/w/services/gateway/Cargo.toml",
                "targets": [
                    {"name": "natter-gateway", "kind": ["bin"], "src_path": "/w/services/gateway/src/main.rs"},
                    {"name": "natter_gateway", "kind": ["lib"], "src_path": "/w/services/gateway/src/lib.rs"},
                    {"name": "api", "kind": ["test"], "src_path": "/w/services/gateway/tests/api/main.rs"},
                    {"name": "build-script-build", "kind": ["custom-build"], "src_path": "/w/services/gateway/build.rs"},
                    {"name": "tool", "kind": ["bin"], "src_path": "/w/services/gateway/src/bin/tool.rs"}
                ]
            }]
        }"#;
        let (root, crates) = from_metadata(json).unwrap();
        assert_eq!(root, PathBuf::from("/w"));
        let shown = crates.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            shown,
            [
                "natter-gateway (lib)",
                "natter-gateway (bin natter-gateway)",
                "natter-gateway (bin tool)"
            ]
        );
        assert!(crates[0].is_named("gateway") && crates[0].is_named("natter-gateway"));
    }

    #[test]
    fn lists_this_workspace_with_xtask_in_it() {
        let (_, crates) = crates().unwrap();
        assert!(
            crates
                .iter()
                .any(|krate| krate.package == "xtask" && krate.root.ends_with("xtask/src/main.rs")),
            "{crates:?}"
        );
    }
}
