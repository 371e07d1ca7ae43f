//! The references between a crate's modules: every path in a module's file (`use` trees, paths
//! in code and types, paths inside macro bodies) resolved to the module it points into.
//!
//! Only paths that name a module of the crate count: `crate::`, `self::`, `super::`, a child
//! module's name, or a name a `use` bound to a module. A path resolves to its longest prefix
//! that is a module, so `crate::Config` points at the crate root.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use proc_macro2::{Spacing, Span, TokenStream, TokenTree};
use syn::ext::IdentExt as _;
use syn::visit::{self, Visit};
use syn::{Ident, ItemMod, ItemUse, Macro, Path, UseTree, VisRestricted};

use super::graph::{ModuleGraph, ModulePath, Reference};
use super::tree::SourceModule;

/// The module graph of the crate made of `modules`.
pub fn graph(modules: &[SourceModule]) -> ModuleGraph {
    let mut graph = ModuleGraph::new(modules.iter().map(|module| module.path.clone()));
    for module in modules {
        let mut collector = Collector::default();
        collector.visit_file(&module.syntax);
        let scopes = Scopes::of(&module.path, &collector.found, &graph.modules);
        for occurrence in &collector.found {
            let here = scope_path(&module.path, &occurrence.inline);
            let Some(full) = scopes.resolve(&here, &occurrence.segments, &graph.modules) else {
                continue;
            };
            let target = longest_module_prefix(&full, &graph.modules);
            // A module's references to itself and to its inline blocks are no edges.
            if target == module.path {
                continue;
            }
            let reference = Reference {
                file: module.file.clone(),
                line: occurrence.line,
                written: occurrence.written(),
                count: 1,
            };
            graph.add_reference(&module.path, &target, reference);
        }
    }
    graph
}

/// How a path occurs in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// A leaf of a `use` tree: `use a::b` or `use a::b as c`.
    Use,
    /// `use a::*`.
    Glob,
    /// A path in code or in a type: `a::b::f()`, `a::B`.
    Code,
    /// A path found in a macro's tokens.
    Macro,
}

/// A path as written, before resolution.
#[derive(Debug)]
struct Occurrence {
    /// The inline `mod x { ... }` blocks it sits in, outermost first.
    inline: Vec<String>,
    segments: Vec<String>,
    /// The name a `use` binds, when it binds one.
    alias: Option<String>,
    line: usize,
    form: Form,
}

impl Occurrence {
    fn written(&self) -> String {
        let path = self.segments.join("::");
        match self.form {
            Form::Use => format!("use {path}"),
            Form::Glob => format!("use {path}::*"),
            Form::Code => path,
            Form::Macro => format!("{path} (in a macro)"),
        }
    }
}

/// Walks one file's syntax tree and writes down every path that might name a module.
#[derive(Default)]
struct Collector {
    inline: Vec<String>,
    found: Vec<Occurrence>,
}

impl Collector {
    fn record(&mut self, segments: Vec<String>, alias: Option<String>, span: Span, form: Form) {
        self.found.push(Occurrence {
            inline: self.inline.clone(),
            segments,
            alias,
            line: span.start().line,
            form,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &UseTree) {
        match tree {
            UseTree::Path(path) => {
                prefix.push(name(&path.ident));
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            UseTree::Name(leaf) => self.use_leaf(prefix, &leaf.ident, &leaf.ident),
            UseTree::Rename(leaf) => self.use_leaf(prefix, &leaf.ident, &leaf.rename),
            UseTree::Glob(glob) => {
                if !prefix.is_empty() {
                    let span = glob.star_token.span;
                    self.record(prefix.clone(), None, span, Form::Glob);
                }
            }
            UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    /// `use prefix::ident as alias`; `use prefix::{self}` binds the prefix's last name.
    fn use_leaf(&mut self, prefix: &[String], ident: &Ident, alias: &Ident) {
        let mut segments = prefix.to_vec();
        let mut alias = name(alias);
        if ident == "self" {
            if alias == "self" {
                alias = prefix.last().cloned().unwrap_or_default();
            }
        } else {
            segments.push(name(ident));
        }
        if segments.len() >= 2 {
            self.record(segments, Some(alias), ident.span(), Form::Use);
        }
    }

    /// Paths in a macro's tokens: runs of `a::b::c` not preceded by `::`.
    fn macro_tokens(&mut self, tokens: TokenStream) {
        let tokens = tokens.into_iter().collect::<Vec<_>>();
        let mut at = 0;
        while at < tokens.len() {
            match &tokens[at] {
                TokenTree::Group(group) => {
                    self.macro_tokens(group.stream());
                    at += 1;
                }
                TokenTree::Ident(first) => {
                    let absolute = at >= 2 && is_path_separator(&tokens, at - 2);
                    let mut segments = vec![name(first)];
                    let mut next = at + 1;
                    while let Some(TokenTree::Ident(segment)) = tokens.get(next + 2) {
                        if !is_path_separator(&tokens, next) {
                            break;
                        }
                        segments.push(name(segment));
                        next += 3;
                    }
                    if !absolute && segments.len() >= 2 {
                        self.record(segments, None, first.span(), Form::Macro);
                    }
                    at = next;
                }
                TokenTree::Punct(_) | TokenTree::Literal(_) => at += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_mod(&mut self, item: &'ast ItemMod) {
        // `mod x;` declares a module; it does not refer to one.
        if item.content.is_some() {
            self.inline.push(name(&item.ident));
            visit::visit_item_mod(self, item);
            self.inline.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast ItemUse) {
        if item.leading_colon.is_none() {
            self.use_tree(&mut Vec::new(), &item.tree);
        }
    }

    fn visit_path(&mut self, path: &'ast Path) {
        if path.leading_colon.is_none() && path.segments.len() >= 2 {
            let segments = path
                .segments
                .iter()
                .map(|segment| name(&segment.ident))
                .collect();
            let span = path
                .segments
                .first()
                .map_or_else(Span::call_site, |segment| segment.ident.span());
            self.record(segments, None, span, Form::Code);
        }
        visit::visit_path(self, path);
    }

    /// `pub(super)` and `pub(in crate::a)` say who may see an item, not what it uses.
    fn visit_vis_restricted(&mut self, _: &'ast VisRestricted) {}

    fn visit_macro(&mut self, mac: &'ast Macro) {
        self.visit_path(&mac.path);
        self.macro_tokens(mac.tokens.clone());
    }
}

/// `::` at `tokens[at..at + 2]`.
fn is_path_separator(tokens: &[TokenTree], at: usize) -> bool {
    matches!(
        (tokens.get(at), tokens.get(at + 1)),
        (Some(TokenTree::Punct(first)), Some(TokenTree::Punct(second)))
            if first.as_char() == ':' && first.spacing() == Spacing::Joint && second.as_char() == ':'
    )
}

fn name(ident: &Ident) -> String {
    ident.unraw().to_string()
}

/// What the `use` items of one file bind, per scope (the file's module or one of its inline
/// blocks): names bound to modules, and the modules glob-imported.
#[derive(Default)]
struct Scopes {
    aliases: HashMap<(Vec<String>, String), Vec<String>>,
    globs: HashMap<Vec<String>, Vec<Vec<String>>>,
}

impl Scopes {
    fn of(module: &ModulePath, found: &[Occurrence], modules: &BTreeSet<ModulePath>) -> Self {
        let mut scopes = Self::default();
        // A `use` may go through a name another `use` bound (`use crate::ws; use ws::protocol;`),
        // in any order: resolve them until nothing new is bound.
        loop {
            let mut bound = false;
            for occurrence in found {
                let here = scope_path(module, &occurrence.inline);
                let Some(full) = scopes.resolve(&here, &occurrence.segments, modules) else {
                    continue;
                };
                match (occurrence.form, &occurrence.alias) {
                    (Form::Use, Some(alias)) if modules.contains(&ModulePath(full.clone())) => {
                        // The first binding stays: two `use`s under opposite `cfg`s may bind
                        // one name, and replacing would never settle.
                        if let Entry::Vacant(vacant) = scopes.aliases.entry((here, alias.clone())) {
                            vacant.insert(full);
                            bound = true;
                        }
                    }
                    (Form::Glob, _) => {
                        let globs = scopes.globs.entry(here).or_default();
                        if !globs.contains(&full) {
                            globs.push(full);
                            bound = true;
                        }
                    }
                    _ => {}
                }
            }
            if !bound {
                return scopes;
            }
        }
    }

    /// The full logical path `segments` names when written in scope `here`, if it names
    /// something in this crate.
    fn resolve(
        &self,
        here: &[String],
        segments: &[String],
        modules: &BTreeSet<ModulePath>,
    ) -> Option<Vec<String>> {
        let (first, rest) = segments.split_first()?;
        let mut full = match first.as_str() {
            "crate" => Vec::new(),
            "self" => here.to_vec(),
            "super" => {
                let further = rest
                    .iter()
                    .take_while(|segment| *segment == "super")
                    .count();
                let mut base = here.to_vec();
                for _ in 0..=further {
                    base.pop()?;
                }
                base.extend(rest[further..].iter().cloned());
                return Some(base);
            }
            "Self" => return None,
            bare => self.bare(here, bare, modules)?,
        };
        full.extend(rest.iter().cloned());
        Some(full)
    }

    /// What a bare first segment names in scope `here`: a child module, a name a `use` bound
    /// to a module, or either of those in a glob-imported module.
    fn bare(
        &self,
        here: &[String],
        name: &str,
        modules: &BTreeSet<ModulePath>,
    ) -> Option<Vec<String>> {
        let in_scope = |scope: &[String]| {
            let mut child = scope.to_vec();
            child.push(name.to_owned());
            if modules.contains(&ModulePath(child.clone())) {
                return Some(child);
            }
            self.aliases
                .get(&(scope.to_vec(), name.to_owned()))
                .cloned()
        };
        in_scope(here).or_else(|| {
            self.globs
                .get(here)
                .into_iter()
                .flatten()
                .find_map(|glob| in_scope(glob))
        })
    }
}

/// The logical path of a scope: the module, then the inline blocks.
fn scope_path(module: &ModulePath, inline: &[String]) -> Vec<String> {
    module.0.iter().chain(inline).cloned().collect()
}

/// The module a logical path points into: its longest prefix that is a module.
fn longest_module_prefix(full: &[String], modules: &BTreeSet<ModulePath>) -> ModulePath {
    (0..=full.len())
        .rev()
        .map(|length| ModulePath(full[..length].to_vec()))
        .find(|prefix| modules.contains(prefix))
        .unwrap_or_default()
}
