//! The module graph of one crate: its modules and, for each reference from one module into
//! another, where in the source one such reference is written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

/// A module's path from the crate root: empty for the root, `["ws", "protocol"]` for
/// `ws::protocol`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModulePath(pub Vec<String>);

impl ModulePath {
    /// The crate root, `crate`.
    pub fn root() -> Self {
        Self::default()
    }

    /// This module's child `name`.
    pub fn child(&self, name: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(name.to_owned());
        Self(segments)
    }
}

impl fmt::Display for ModulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("crate")
        } else {
            f.write_str(&self.0.join("::"))
        }
    }
}

/// One reference that makes an edge, and how many references make it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// The path as written, e.g. `use crate::auth::Keys` or `super::presence::Hub`.
    pub written: String,
    /// References from the same module to the same module, this one included.
    pub count: usize,
}

/// Modules and the references between them: `edges[a][b]` when `a` refers to `b`.
#[derive(Debug, Default)]
pub struct ModuleGraph {
    pub modules: BTreeSet<ModulePath>,
    pub edges: BTreeMap<ModulePath, BTreeMap<ModulePath, Reference>>,
}

impl ModuleGraph {
    pub fn new(modules: impl IntoIterator<Item = ModulePath>) -> Self {
        Self {
            modules: modules.into_iter().collect(),
            edges: BTreeMap::new(),
        }
    }

    /// Records a reference from `from` to `to`, keeping the earliest one as the edge's example.
    pub fn add_reference(&mut self, from: &ModulePath, to: &ModulePath, reference: Reference) {
        let targets = self.edges.entry(from.clone()).or_default();
        match targets.get_mut(to) {
            Some(kept) => {
                let count = kept.count + 1;
                if reference.line < kept.line {
                    *kept = reference;
                }
                kept.count = count;
            }
            None => {
                targets.insert(
                    to.clone(),
                    Reference {
                        count: 1,
                        ..reference
                    },
                );
            }
        }
    }

    /// The modules `from` refers to, in order.
    pub fn targets(&self, from: &ModulePath) -> impl Iterator<Item = (&ModulePath, &Reference)> {
        self.edges.get(from).into_iter().flatten()
    }

    pub fn reference(&self, from: &ModulePath, to: &ModulePath) -> Option<&Reference> {
        self.edges.get(from)?.get(to)
    }

    pub fn edge_count(&self) -> usize {
        self.edges.values().map(BTreeMap::len).sum()
    }

    /// One line per module: `module -> dep1, dep2` (`(none)` when it refers to no module).
    pub fn render(&self) -> String {
        let mut text = String::new();
        for module in &self.modules {
            let targets = self
                .targets(module)
                .map(|(target, _)| target.to_string())
                .collect::<Vec<_>>();
            let targets = if targets.is_empty() {
                "(none)".to_owned()
            } else {
                targets.join(", ")
            };
            text.push_str(&format!("{module} -> {targets}\n"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> ModulePath {
        if text == "crate" {
            ModulePath::root()
        } else {
            ModulePath(text.split("::").map(str::to_owned).collect())
        }
    }

    fn reference(line: usize) -> Reference {
        Reference {
            file: PathBuf::from("src/a.rs"),
            line,
            written: format!("reference on line {line}"),
            count: 1,
        }
    }

    #[test]
    fn keeps_the_earliest_reference_and_counts_them_all() {
        let mut graph = ModuleGraph::new([path("a"), path("b")]);
        graph.add_reference(&path("a"), &path("b"), reference(9));
        graph.add_reference(&path("a"), &path("b"), reference(3));
        graph.add_reference(&path("a"), &path("b"), reference(5));
        let kept = graph.reference(&path("a"), &path("b")).unwrap();
        assert_eq!((kept.line, kept.count), (3, 3));
    }

    #[test]
    fn renders_one_line_per_module_with_its_targets() {
        let mut graph = ModuleGraph::new([ModulePath::root(), path("a"), path("a::b")]);
        graph.add_reference(&path("a"), &path("a::b"), reference(1));
        graph.add_reference(&path("a"), &ModulePath::root(), reference(2));
        assert_eq!(
            graph.render(),
            "crate -> (none)\na -> crate, a::b\na::b -> (none)\n"
        );
    }
}
