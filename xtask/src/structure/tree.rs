//! A crate's module tree: the crate root and every file reached through `mod x;` (`x.rs` or
//! `x/mod.rs`, or a `#[path]`), each parsed with syn. Inline `mod x { ... }` blocks stay part
//! of their file's module.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use proc_macro2::TokenTree;
use syn::ext::IdentExt as _;
use syn::{Attribute, Item, ItemMod, Meta};

use super::graph::ModulePath;

/// One module file of a crate, parsed.
pub struct SourceModule {
    pub path: ModulePath,
    pub file: PathBuf,
    pub syntax: syn::File,
    /// Lines in the file.
    pub lines: usize,
    /// Declared under `#[cfg(test)]`, itself or through a parent.
    pub test_only: bool,
}

/// A module file still to read.
struct Pending {
    path: ModulePath,
    file: PathBuf,
    /// Where its children's files are: the file's folder for a crate root, a `mod.rs` or a
    /// `#[path]` file; `x/` beside an `x.rs`.
    children_dir: PathBuf,
    test_only: bool,
}

/// The crate whose root file is `root`, its modules in the order they are declared.
pub fn load(root: &Path) -> anyhow::Result<Vec<SourceModule>> {
    let children_dir = root.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut pending = vec![Pending {
        path: ModulePath::root(),
        file: root.to_path_buf(),
        children_dir,
        test_only: false,
    }];
    let mut modules = Vec::new();
    while let Some(next) = pending.pop() {
        let source = fs::read_to_string(&next.file)
            .with_context(|| format!("reading {}", next.file.display()))?;
        let syntax = parse(&source, &next.file)?;
        let mut children = Vec::new();
        declared_files(&next, &syntax.items, &[], next.test_only, &mut children)?;
        // Popped from the end: reversed, the children are read in declaration order.
        pending.extend(children.into_iter().rev());
        modules.push(SourceModule {
            path: next.path,
            file: next.file,
            syntax,
            lines: source.lines().count(),
            test_only: next.test_only,
        });
    }
    Ok(modules)
}

fn parse(source: &str, file: &Path) -> anyhow::Result<syn::File> {
    syn::parse_file(source).map_err(|error| {
        let at = error.span().start();
        anyhow!(
            "parsing {}:{}:{}: {error}",
            file.display(),
            at.line,
            at.column + 1
        )
    })
}

/// The files of the `mod x;` declarations among `items`, which sit inside the inline modules
/// `inline` of `parent`'s file.
fn declared_files(
    parent: &Pending,
    items: &[Item],
    inline: &[String],
    test_only: bool,
    found: &mut Vec<Pending>,
) -> anyhow::Result<()> {
    for item in items {
        let Item::Mod(declaration) = item else {
            continue;
        };
        let name = declaration.ident.unraw().to_string();
        let test_only = test_only || is_cfg_test(&declaration.attrs);
        if let Some((_, items)) = &declaration.content {
            let mut inline = inline.to_vec();
            inline.push(name);
            declared_files(parent, items, &inline, test_only, found)?;
            continue;
        }
        let mut path = parent.path.clone();
        for block in inline {
            path = path.child(block);
        }
        let path = path.child(&name);
        let dir = inline
            .iter()
            .fold(parent.children_dir.clone(), |dir, block| dir.join(block));
        // Outside inline blocks a `#[path]` is relative to the declaring file's folder.
        let path_base = if inline.is_empty() {
            parent.file.parent().unwrap_or(&dir)
        } else {
            &dir
        };
        let Some((file, children_dir)) = module_file(declaration, &dir, path_base, &name) else {
            if declaration
                .attrs
                .iter()
                .any(|attr| attr.path().is_ident("cfg"))
            {
                // Configured out on this platform, perhaps: rustc would not look for it either.
                continue;
            }
            bail!(
                "{}:{}: no file for `mod {name};` (looked for {name}.rs and {name}/mod.rs in {})",
                parent.file.display(),
                declaration.ident.span().start().line,
                dir.display()
            );
        };
        found.push(Pending {
            path,
            file,
            children_dir,
            test_only,
        });
    }
    Ok(())
}

/// The file of `mod name;` declared for the folder `dir` (or with a `#[path]` relative to
/// `path_base`), and the folder of its own children.
fn module_file(
    declaration: &ItemMod,
    dir: &Path,
    path_base: &Path,
    name: &str,
) -> Option<(PathBuf, PathBuf)> {
    if let Some(explicit) = path_attribute(&declaration.attrs) {
        let file = path_base.join(explicit);
        let children_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        return file.is_file().then_some((file, children_dir));
    }
    let children_dir = dir.join(name);
    [dir.join(format!("{name}.rs")), children_dir.join("mod.rs")]
        .into_iter()
        .find(|file| file.is_file())
        .map(|file| (file, children_dir))
}

/// `x` of `#[path = "x"]`.
fn path_attribute(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|attr| match &attr.meta {
        Meta::NameValue(pair) if pair.path.is_ident("path") => match &pair.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(text),
                ..
            }) => Some(text.value()),
            _ => None,
        },
        _ => None,
    })
}

/// `#[cfg(test)]`, or a `cfg` that needs `test` (`all(test, ...)`), but not `not(test)`.
pub fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| match &attr.meta {
        Meta::List(list) if list.path.is_ident("cfg") => {
            let mut idents = Vec::new();
            collect_idents(list.tokens.clone(), &mut idents);
            idents.iter().any(|ident| ident == "test")
                && !idents.iter().any(|ident| ident == "not" || ident == "any")
        }
        _ => false,
    })
}

fn collect_idents(tokens: proc_macro2::TokenStream, idents: &mut Vec<String>) {
    for token in tokens {
        match token {
            TokenTree::Ident(ident) => idents.push(ident.to_string()),
            TokenTree::Group(group) => collect_idents(group.stream(), idents),
            TokenTree::Punct(_) | TokenTree::Literal(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate in a temporary folder: `files` are paths under it and their text.
    fn crate_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        dir
    }

    fn module_names(modules: &[SourceModule]) -> Vec<String> {
        modules
            .iter()
            .map(|module| module.path.to_string())
            .collect()
    }

    #[test]
    fn follows_mod_rs_folders_and_file_plus_folder_modules() {
        let dir = crate_with(&[
            ("src/lib.rs", "mod a; mod b;"),
            ("src/a/mod.rs", "mod inner;"),
            ("src/a/inner.rs", ""),
            ("src/b.rs", "pub mod c;"),
            ("src/b/c.rs", "mod d;"),
            ("src/b/c/d/mod.rs", ""),
        ]);
        let modules = load(&dir.path().join("src/lib.rs")).unwrap();
        assert_eq!(
            module_names(&modules),
            ["crate", "a", "a::inner", "b", "b::c", "b::c::d"]
        );
        let d = modules.iter().find(|m| m.path.to_string() == "b::c::d");
        assert!(d.unwrap().file.ends_with("src/b/c/d/mod.rs"));
    }

    #[test]
    fn finds_files_declared_inside_inline_blocks_and_by_path_attribute() {
        let dir = crate_with(&[
            (
                "src/main.rs",
                "mod outer { pub mod inner; }\n#[path = \"elsewhere/named.rs\"] mod renamed;",
            ),
            ("src/outer/inner.rs", ""),
            ("src/elsewhere/named.rs", "mod sibling;"),
            ("src/elsewhere/sibling.rs", ""),
        ]);
        let modules = load(&dir.path().join("src/main.rs")).unwrap();
        assert_eq!(
            module_names(&modules),
            ["crate", "outer::inner", "renamed", "renamed::sibling"]
        );
    }

    #[test]
    fn marks_modules_under_cfg_test_as_test_only() {
        let dir = crate_with(&[
            ("src/lib.rs", "mod a;\n#[cfg(test)] mod checks;"),
            ("src/a.rs", ""),
            ("src/checks.rs", "mod more;"),
            ("src/checks/more.rs", ""),
        ]);
        let modules = load(&dir.path().join("src/lib.rs")).unwrap();
        let test_only = modules
            .iter()
            .filter(|module| module.test_only)
            .map(|module| module.path.to_string())
            .collect::<Vec<_>>();
        assert_eq!(test_only, ["checks", "checks::more"]);
    }

    #[test]
    fn fails_on_a_module_without_a_file_unless_it_is_configured_out() {
        let missing = crate_with(&[("src/lib.rs", "mod gone;")]);
        let Err(error) = load(&missing.path().join("src/lib.rs")) else {
            panic!("a module without a file passed");
        };
        assert!(
            error.to_string().contains("no file for `mod gone;`"),
            "{error}"
        );

        let configured_out = crate_with(&[("src/lib.rs", "#[cfg(windows)] mod gone;")]);
        assert!(load(&configured_out.path().join("src/lib.rs")).is_ok());
    }

    #[test]
    fn says_where_a_file_does_not_parse() {
        let dir = crate_with(&[("src/lib.rs", "mod a;"), ("src/a.rs", "\nfn broken( {")]);
        let Err(error) = load(&dir.path().join("src/lib.rs")) else {
            panic!("a file that does not parse passed");
        };
        assert!(error.to_string().contains("a.rs:2:"), "{error}");
    }
}
