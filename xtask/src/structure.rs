//! `cargo xtask structure`: fails when a crate of the workspace has a module cycle (modules that
//! refer to each other, directly or around a loop); prints module graphs and the largest
//! functions and files on request. `cargo xtask test` runs the same check.

mod cycles;
mod functions;
mod graph;
mod references;
mod tree;
mod workspace;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use self::cycles::CycleGroup;
use self::functions::FunctionSize;
use self::graph::ModuleGraph;
use self::tree::SourceModule;
use self::workspace::CrateTarget;
use crate::step::banner;

#[derive(clap::Args)]
pub struct StructureArgs {
    /// Also print this crate's module graph, one line per module: `module -> the modules it
    /// refers to`. A package name, with or without `natter-`; may be repeated.
    #[arg(long = "graph", value_name = "CRATE")]
    graphs: Vec<String>,
    /// Also list the N largest functions (tests left out) and the N largest files.
    #[arg(long, value_name = "N")]
    largest: Option<usize>,
}

/// One crate, read and checked.
struct Analysis {
    target: CrateTarget,
    modules: Vec<SourceModule>,
    graph: ModuleGraph,
    groups: Vec<CycleGroup>,
}

pub fn run(args: &StructureArgs) -> anyhow::Result<ExitCode> {
    let (root, analyses) = analyse_workspace()?;
    banner("module cycles");
    let acyclic = report_cycles(&root, &analyses);
    banner(&format!(
        "functions over {MAX_FUNCTION_LINES} lines in {}",
        GUARDED.join(", ")
    ));
    let short = report_long_functions(&root, &analyses);
    let passed = acyclic && short;
    for name in &args.graphs {
        let named = analyses
            .iter()
            .filter(|analysis| analysis.target.is_named(name))
            .collect::<Vec<_>>();
        if named.is_empty() {
            let known = analyses
                .iter()
                .map(|analysis| analysis.target.package.as_str())
                .collect::<BTreeSet<_>>();
            bail!(
                "no crate named `{name}` in the workspace (there are: {})",
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        for analysis in named {
            banner(&format!("module graph of {}", analysis.target));
            print!("{}", analysis.graph.render());
        }
    }
    if let Some(count) = args.largest {
        report_largest(&root, &analyses, count);
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The check `cargo xtask test` runs: prints each crate's verdict and every cycle found;
/// whether there was none.
pub fn check_workspace() -> anyhow::Result<bool> {
    let (root, analyses) = analyse_workspace()?;
    let acyclic = report_cycles(&root, &analyses);
    Ok(report_long_functions(&root, &analyses) && acyclic)
}

/// The longest a function outside tests may be in the folders of [`GUARDED`]: about a screen.
const MAX_FUNCTION_LINES: usize = 80;
/// The folders of the services and the libraries they share, where every function must be
/// short enough to hold in one's head (the load generator and xtask are tools, not guarded).
const GUARDED: [&str; 2] = ["services/", "crates/"];

/// Lists every function of a guarded folder over [`MAX_FUNCTION_LINES`]; whether there was none.
fn report_long_functions(root: &Path, analyses: &[Analysis]) -> bool {
    let mut seen = BTreeSet::new();
    let mut long = Vec::new();
    for module in analyses.iter().flat_map(|analysis| &analysis.modules) {
        let file = relative(root, &module.file);
        let guarded = GUARDED.iter().any(|folder| file.starts_with(folder));
        if !guarded || !seen.insert(module.file.clone()) {
            continue;
        }
        long.extend(
            functions::in_module(module)
                .into_iter()
                .filter(|function| function.lines > MAX_FUNCTION_LINES),
        );
    }
    long.sort_by_key(|function| std::cmp::Reverse(function.lines));
    for function in &long {
        println!(
            "    LONG   {}:{} {} is {} lines",
            relative(root, &function.file).display(),
            function.line,
            function.name,
            function.lines
        );
    }
    if long.is_empty() {
        println!("    ok     none");
    } else {
        println!("    split each into named steps of at most {MAX_FUNCTION_LINES} lines");
    }
    long.is_empty()
}

fn analyse_workspace() -> anyhow::Result<(PathBuf, Vec<Analysis>)> {
    let (root, targets) = workspace::crates()?;
    let analyses = targets
        .into_iter()
        .map(|target| {
            let (modules, graph, groups) =
                analyse(&target.root).with_context(|| format!("checking {target}"))?;
            Ok(Analysis {
                target,
                modules,
                graph,
                groups,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((root, analyses))
}

/// The crate whose root file is `root`: its modules, their graph and its cycles.
fn analyse(root: &Path) -> anyhow::Result<(Vec<SourceModule>, ModuleGraph, Vec<CycleGroup>)> {
    let modules = tree::load(root)?;
    let graph = references::graph(&modules);
    let groups = cycles::find(&graph);
    Ok((modules, graph, groups))
}

/// Prints one line per crate and, under a crate with cycles, each cycle with the reference
/// that makes each of its edges; whether no crate had a cycle.
fn report_cycles(root: &Path, analyses: &[Analysis]) -> bool {
    let mut failed = 0;
    for analysis in analyses {
        let modules = analysis.modules.len();
        let edges = analysis.graph.edge_count();
        if analysis.groups.is_empty() {
            println!(
                "    ok     {}: {modules} modules, {edges} edges between them, no cycle",
                analysis.target
            );
            continue;
        }
        failed += 1;
        let in_cycles = analysis
            .groups
            .iter()
            .flat_map(|group| &group.modules)
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        println!(
            "    CYCLES {}: {modules} modules, {edges} edges; {} modules in cycles: {}",
            analysis.target,
            in_cycles.len(),
            in_cycles.join(", ")
        );
        for group in &analysis.groups {
            print!("{}", render_group(root, &analysis.graph, group));
        }
    }
    if failed > 0 {
        println!(
            "    module cycles in {failed} crate(s): remove one reference of each cycle above \
             (draw the arrows one way, put shared types in the leaf: STYLE.md)"
        );
    }
    failed == 0
}

/// Each cycle of `group` as `a → b → a`, then under it each edge with where it is made.
fn render_group(root: &Path, graph: &ModuleGraph, group: &CycleGroup) -> String {
    let mut text = String::new();
    for cycle in &group.cycles {
        let mut around = cycle.iter().map(ToString::to_string).collect::<Vec<_>>();
        around.push(around[0].clone());
        text.push_str(&format!("      {}\n", around.join(" → ")));
        let edges = around
            .windows(2)
            .zip(cycle.iter().zip(cycle.iter().cycle().skip(1)))
            .map(|(names, (from, to))| (format!("{} → {}", names[0], names[1]), from, to))
            .collect::<Vec<_>>();
        let width = edges
            .iter()
            .map(|(shown, _, _)| shown.chars().count())
            .max()
            .unwrap_or(0);
        for (shown, from, to) in edges {
            let Some(reference) = graph.reference(from, to) else {
                continue;
            };
            let more = match reference.count {
                1 => String::new(),
                count => format!(" (+{} more)", count - 1),
            };
            text.push_str(&format!(
                "        {shown:width$}  {}:{}  {}{more}\n",
                relative(root, &reference.file).display(),
                reference.line,
                reference.written,
            ));
        }
    }
    text
}

/// The largest functions outside tests and the largest files of the workspace's crates.
fn report_largest(root: &Path, analyses: &[Analysis], count: usize) {
    let mut seen = BTreeSet::new();
    let mut functions = Vec::new();
    let mut files = Vec::new();
    for analysis in analyses {
        for module in &analysis.modules {
            // A file shared by a library and a binary would be listed twice.
            if !seen.insert(module.file.clone()) {
                continue;
            }
            files.push((module.lines, module.file.clone()));
            functions.extend(
                functions::in_module(module)
                    .into_iter()
                    .map(|function| (analysis.target.package.clone(), function)),
            );
        }
    }
    functions.sort_by(|(_, a), (_, b)| b.lines.cmp(&a.lines).then_with(|| a.file.cmp(&b.file)));
    files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));

    banner(&format!("the {count} largest functions (tests left out)"));
    for (
        package,
        FunctionSize {
            name,
            file,
            line,
            lines,
        },
    ) in functions.iter().take(count)
    {
        let at = format!("{}:{line}", relative(root, file).display());
        println!("    {lines:>5} lines  {at:<48}  {package} {name}");
    }
    banner(&format!("the {count} largest files"));
    for (lines, file) in files.iter().take(count) {
        println!("    {lines:>5} lines  {}", relative(root, file).display());
    }
}

fn relative<'a>(root: &Path, file: &'a Path) -> &'a Path {
    file.strip_prefix(root).unwrap_or(file)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// Writes a crate into a temporary folder (`files` are paths under `src/` and their text)
    /// and checks it: its edges as `from -> to`, and its cycles as `a → b → a`.
    fn check(files: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join("src").join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        let root = ["lib.rs", "main.rs"]
            .into_iter()
            .map(|name| dir.path().join("src").join(name))
            .find(|root| root.is_file())
            .unwrap();
        let (_, graph, groups) = analyse(&root).unwrap();
        let edges = graph
            .edges
            .iter()
            .flat_map(|(from, targets)| targets.keys().map(move |to| format!("{from} -> {to}")))
            .collect();
        let cycles = groups
            .iter()
            .flat_map(|group| &group.cycles)
            .map(|cycle| {
                let mut names = cycle.iter().map(ToString::to_string).collect::<Vec<_>>();
                names.push(names[0].clone());
                names.join(" → ")
            })
            .collect();
        (edges, cycles)
    }

    /// A crate at `folder` (under a temporary workspace root) whose one function is `lines`
    /// long; whether the long-function check passes it.
    fn long_function_check(folder: &str, lines: usize) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join(folder).join("src");
        fs::create_dir_all(&src).unwrap();
        let body = "    let _ = 1;\n".repeat(lines - 2);
        fs::write(src.join("lib.rs"), format!("pub fn f() {{\n{body}}}\n")).unwrap();
        let root = src.join("lib.rs");
        let (modules, graph, groups) = analyse(&root).unwrap();
        let analysis = Analysis {
            target: CrateTarget {
                package: "probe".into(),
                binary: None,
                root,
            },
            modules,
            graph,
            groups,
        };
        report_long_functions(dir.path(), &[analysis])
    }

    #[test]
    fn a_service_function_over_a_screen_fails_the_check() {
        assert!(long_function_check("services/probe", MAX_FUNCTION_LINES));
        assert!(!long_function_check(
            "services/probe",
            MAX_FUNCTION_LINES + 1
        ));
        assert!(!long_function_check("crates/probe", MAX_FUNCTION_LINES + 1));
    }

    #[test]
    fn tools_outside_services_and_crates_may_have_long_functions() {
        assert!(long_function_check("loadtest", MAX_FUNCTION_LINES + 50));
    }

    #[test]
    fn finds_a_two_module_cycle_through_use_crate_paths() {
        let (_, cycles) = check(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a.rs", "use crate::b::Thing;\npub struct Other;\n"),
            ("b.rs", "use crate::{a::Other};\npub struct Thing;\n"),
        ]);
        assert_eq!(cycles, ["a → b → a"]);
    }

    #[test]
    fn finds_a_three_module_cycle_through_inline_crate_paths() {
        let (_, cycles) = check(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "pub fn f() { crate::b::g(); }\n"),
            ("b.rs", "pub fn g() -> crate::c::Kind { crate::c::Kind }\n"),
            (
                "c.rs",
                "pub struct Kind;\nimpl Kind { fn h() { let _ = crate::a::f; } }\n",
            ),
        ]);
        assert_eq!(cycles, ["a → b → c → a"]);
    }

    #[test]
    fn finds_a_cycle_through_super_paths() {
        let (edges, cycles) = check(&[
            ("lib.rs", "mod ws;\n"),
            (
                "ws/mod.rs",
                "mod protocol;\nmod session;\npub struct Hub;\n",
            ),
            (
                "ws/protocol.rs",
                "pub fn frame(_: &super::session::Session) {}\n",
            ),
            (
                "ws/session.rs",
                "use super::protocol;\npub struct Session;\nfn run() { protocol::frame(&Session); }\n",
            ),
        ]);
        assert_eq!(
            edges,
            ["ws::protocol -> ws::session", "ws::session -> ws::protocol"]
        );
        assert_eq!(cycles, ["ws::protocol → ws::session → ws::protocol"]);
    }

    #[test]
    fn counts_a_reference_to_a_root_item_as_an_edge_to_the_root() {
        let (edges, cycles) = check(&[
            (
                "lib.rs",
                "mod consumer;\npub struct Config;\npub fn run() { consumer::run(); }\n",
            ),
            ("consumer.rs", "pub fn run() { let _ = crate::Config; }\n"),
        ]);
        assert_eq!(edges, ["crate -> consumer", "consumer -> crate"]);
        assert_eq!(cycles, ["crate → consumer → crate"]);
    }

    #[test]
    fn passes_a_crate_whose_references_go_one_way() {
        let (edges, cycles) = check(&[
            (
                "main.rs",
                "mod server;\nmod protocol;\nfn main() { server::serve(); }\n",
            ),
            (
                "server.rs",
                "use crate::protocol::Frame;\npub fn serve() {}\n",
            ),
            ("protocol.rs", "pub struct Frame;\n"),
        ]);
        assert_eq!(edges, ["crate -> server", "server -> protocol"]);
        assert!(cycles.is_empty(), "{cycles:?}");
    }

    #[test]
    fn makes_no_self_edge_of_a_test_module_using_its_parent() {
        let (edges, _) = check(&[
            ("lib.rs", "mod a;\n"),
            (
                "a.rs",
                "pub fn f() { self::g() }\nfn g() {}\nmod inner { pub fn h() { super::f() } }\n\
                 #[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn works() { f(); super::inner::h(); }\n}\n",
            ),
        ]);
        assert!(edges.is_empty(), "{edges:?}");
    }

    #[test]
    fn resolves_modules_nested_in_folders_of_both_styles() {
        let (edges, cycles) = check(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a/mod.rs", "mod inner;\n"),
            ("a/inner.rs", "pub fn f() { crate::b::c::g() }\n"),
            ("b.rs", "pub mod c;\n"),
            ("b/c.rs", "pub fn g() { crate::a::inner::f() }\n"),
        ]);
        assert_eq!(edges, ["a::inner -> b::c", "b::c -> a::inner"]);
        assert_eq!(cycles, ["a::inner → b::c → a::inner"]);
    }

    #[test]
    fn resolves_a_path_to_its_longest_prefix_that_is_a_module() {
        let (edges, _) = check(&[
            ("lib.rs", "mod ws;\nmod presence;\n"),
            ("ws/mod.rs", "pub mod protocol;\n"),
            ("ws/protocol.rs", "pub fn frame() {}\n"),
            ("presence.rs", "fn f() { crate::ws::protocol::frame(); }\n"),
        ]);
        assert_eq!(edges, ["presence -> ws::protocol"]);
    }

    #[test]
    fn follows_grouped_nested_and_aliased_use_trees() {
        let (edges, _) = check(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\nmod ws;\n"),
            (
                "a.rs",
                "use crate::{b, c::{self as see}};\nuse crate::ws;\nfn f() { ws::session::run(); }\n",
            ),
            ("b.rs", ""),
            ("c.rs", ""),
            ("ws/mod.rs", "pub mod session;\n"),
            ("ws/session.rs", "pub fn run() {}\n"),
        ]);
        assert_eq!(edges, ["a -> b", "a -> c", "a -> ws", "a -> ws::session"]);
    }

    #[test]
    fn finds_paths_inside_macro_bodies() {
        let (edges, _) = check(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            (
                "a.rs",
                "fn f() { tracing::info!(kind = ?crate::b::Kind::One, \"x\"); }\n",
            ),
            ("b.rs", "pub enum Kind { One }\n"),
        ]);
        assert_eq!(edges, ["a -> b"]);
    }

    #[test]
    fn ignores_visibility_restrictions_and_absolute_paths() {
        let (edges, _) = check(&[
            ("lib.rs", "mod a;\n"),
            (
                "a.rs",
                "pub(super) fn f() {}\npub(crate) struct S;\nfn g() { ::std::mem::drop(1); }\n",
            ),
        ]);
        assert!(edges.is_empty(), "{edges:?}");
    }

    #[test]
    fn reports_where_each_edge_of_a_cycle_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
        fs::write(src.join("a.rs"), "\n\nuse crate::b::B;\n").unwrap();
        fs::write(src.join("b.rs"), "fn f() {\n    super::a::g();\n}\n").unwrap();
        let (_, graph, groups) = analyse(&src.join("lib.rs")).unwrap();
        let shown = render_group(dir.path(), &graph, &groups[0]);
        assert_eq!(
            shown,
            "      a → b → a\n\
             \x20       a → b  src/a.rs:3  use crate::b::B\n\
             \x20       b → a  src/b.rs:2  super::a::g\n"
        );
    }

    #[test]
    fn finds_no_cycle_in_xtask_itself() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs");
        let (modules, _, groups) = analyse(&root).unwrap();
        assert!(modules.len() > 10);
        assert!(groups.is_empty(), "{groups:?}");
    }
}
