//! Function sizes: every `fn` item, `impl` method and trait method with a body, outside tests,
//! with its line count, for the report of the largest ones.

use std::path::PathBuf;

use proc_macro2::Span;
use syn::visit::{self, Visit};
use syn::{Attribute, Block, ImplItemFn, ItemFn, ItemImpl, ItemMod, ItemTrait, TraitItemFn, Type};

use super::tree::{SourceModule, is_cfg_test};

/// One function and its length, from the line of `fn` to the closing brace.
#[derive(Debug, PartialEq, Eq)]
pub struct FunctionSize {
    /// `module::Type::method` or `module::function`, inline blocks included.
    pub name: String,
    pub file: PathBuf,
    pub line: usize,
    pub lines: usize,
}

/// The functions of `module`'s file that are not tests nor in `#[cfg(test)]` code.
pub fn in_module(module: &SourceModule) -> Vec<FunctionSize> {
    if module.test_only {
        return Vec::new();
    }
    let mut measure = Measure {
        file: module.file.clone(),
        scope: module.path.0.clone(),
        found: Vec::new(),
    };
    measure.visit_file(&module.syntax);
    measure.found
}

struct Measure {
    file: PathBuf,
    /// Module path, inline blocks and the `impl` or `trait` being walked.
    scope: Vec<String>,
    found: Vec<FunctionSize>,
}

impl Measure {
    fn record(&mut self, name: &syn::Ident, start: Span, block: &Block) {
        let line = start.start().line;
        let end = block.brace_token.span.close().end().line;
        let mut path = self.scope.clone();
        path.push(name.to_string());
        self.found.push(FunctionSize {
            name: path.join("::"),
            file: self.file.clone(),
            line,
            lines: end.saturating_sub(line) + 1,
        });
    }

    fn within<T>(&mut self, name: String, walk: impl FnOnce(&mut Self) -> T) -> T {
        self.scope.push(name);
        let walked = walk(self);
        self.scope.pop();
        walked
    }
}

/// `#[test]`, `#[tokio::test]`, `#[sqlx::test]`, or `#[cfg(test)]`.
fn is_test(attrs: &[Attribute]) -> bool {
    is_cfg_test(attrs)
        || attrs.iter().any(|attr| {
            attr.path()
                .segments
                .last()
                .is_some_and(|segment| segment.ident == "test")
        })
}

/// The name a type is written with: `Session` for `Session<S>` or `crate::ws::Session`.
fn type_name(ty: &Type) -> String {
    match ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .map_or_else(|| "_".to_owned(), |segment| segment.ident.to_string()),
        Type::Reference(reference) => type_name(&reference.elem),
        _ => "_".to_owned(),
    }
}

impl<'ast> Visit<'ast> for Measure {
    fn visit_item_mod(&mut self, item: &'ast ItemMod) {
        if item.content.is_some() && !is_test(&item.attrs) {
            self.within(item.ident.to_string(), |measure| {
                visit::visit_item_mod(measure, item);
            });
        }
    }

    fn visit_item_fn(&mut self, item: &'ast ItemFn) {
        if !is_test(&item.attrs) {
            self.record(&item.sig.ident, item.sig.fn_token.span, &item.block);
            visit::visit_item_fn(self, item);
        }
    }

    fn visit_item_impl(&mut self, item: &'ast ItemImpl) {
        if !is_test(&item.attrs) {
            self.within(type_name(&item.self_ty), |measure| {
                visit::visit_item_impl(measure, item);
            });
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast ImplItemFn) {
        if !is_test(&item.attrs) {
            self.record(&item.sig.ident, item.sig.fn_token.span, &item.block);
            visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_item_trait(&mut self, item: &'ast ItemTrait) {
        if !is_test(&item.attrs) {
            self.within(item.ident.to_string(), |measure| {
                visit::visit_item_trait(measure, item);
            });
        }
    }

    fn visit_trait_item_fn(&mut self, item: &'ast TraitItemFn) {
        if let (false, Some(block)) = (is_test(&item.attrs), &item.default) {
            self.record(&item.sig.ident, item.sig.fn_token.span, block);
            visit::visit_trait_item_fn(self, item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::graph::ModulePath;
    use super::*;

    fn measured(source: &str) -> Vec<(String, usize, usize)> {
        let module = SourceModule {
            path: ModulePath(vec!["ws".to_owned()]),
            file: PathBuf::from("src/ws.rs"),
            syntax: syn::parse_file(source).unwrap(),
            lines: source.lines().count(),
            test_only: false,
        };
        in_module(&module)
            .into_iter()
            .map(|function| (function.name, function.line, function.lines))
            .collect()
    }

    #[test]
    fn measures_functions_and_methods_from_fn_to_closing_brace() {
        let source = "\
fn short() {}

impl<S> Session<S> {
    pub async fn run(
        self,
    ) {
        let _ = 1;
    }
}
";
        assert_eq!(
            measured(source),
            [
                ("ws::short".to_owned(), 1, 1),
                ("ws::Session::run".to_owned(), 4, 5)
            ]
        );
    }

    #[test]
    fn leaves_out_tests_and_cfg_test_modules() {
        let source = "\
fn kept() {}
#[test]
fn a_test() {}
#[tokio::test]
async fn an_async_test() {}
#[cfg(test)]
mod tests {
    fn helper() {}
}
";
        assert_eq!(measured(source), [("ws::kept".to_owned(), 1, 1)]);
    }
}
