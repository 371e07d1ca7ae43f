//! Module cycles: the strongly connected components of a module graph (Tarjan's algorithm),
//! and in each, short concrete cycles that between them take every edge inside it.

use std::collections::{BTreeSet, VecDeque};

use super::graph::{ModuleGraph, ModulePath};

/// Modules that all reach each other, and cycles through them: `[a, b, c]` is a → b → c → a.
#[derive(Debug, PartialEq, Eq)]
pub struct CycleGroup {
    pub modules: Vec<ModulePath>,
    pub cycles: Vec<Vec<ModulePath>>,
}

/// Every group of more than one module in a cycle, with a shortest cycle through each of its
/// edges (the same cycle listed once), shortest cycles first.
pub fn find(graph: &ModuleGraph) -> Vec<CycleGroup> {
    let nodes = graph.modules.iter().collect::<Vec<_>>();
    let adjacency = nodes
        .iter()
        .map(|module| {
            graph
                .targets(module)
                .filter_map(|(target, _)| nodes.binary_search(&target).ok())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    let mut groups = strongly_connected(&adjacency)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let cycles = covering_cycles(&adjacency, &component);
            CycleGroup {
                modules: component.iter().map(|&at| nodes[at].clone()).collect(),
                cycles: cycles
                    .into_iter()
                    .map(|cycle| cycle.into_iter().map(|at| nodes[at].clone()).collect())
                    .collect(),
            }
        })
        .collect::<Vec<_>>();
    groups.sort_by(|a, b| a.modules.cmp(&b.modules));
    groups
}

/// Tarjan's strongly connected components, each sorted.
fn strongly_connected(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut tarjan = Tarjan {
        adjacency,
        index: vec![None; adjacency.len()],
        low: vec![0; adjacency.len()],
        on_stack: vec![false; adjacency.len()],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for node in 0..adjacency.len() {
        if tarjan.index[node].is_none() {
            tarjan.connect(node);
        }
    }
    tarjan.components
}

struct Tarjan<'a> {
    adjacency: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    /// Recursive: a crate's module tree is never deep enough to matter.
    fn connect(&mut self, node: usize) {
        let index = self.next;
        self.next += 1;
        self.index[node] = Some(index);
        self.low[node] = index;
        self.stack.push(node);
        self.on_stack[node] = true;
        for &target in self.adjacency[node].iter() {
            match self.index[target] {
                None => {
                    self.connect(target);
                    self.low[node] = self.low[node].min(self.low[target]);
                }
                Some(target_index) if self.on_stack[target] => {
                    self.low[node] = self.low[node].min(target_index);
                }
                Some(_) => {}
            }
        }
        if self.low[node] == index {
            let mut component = Vec::new();
            while let Some(member) = self.stack.pop() {
                self.on_stack[member] = false;
                component.push(member);
                if member == node {
                    break;
                }
            }
            component.sort_unstable();
            self.components.push(component);
        }
    }
}

/// For each edge u → v inside `component`, u → v followed by a shortest way back from v to u;
/// each cycle once, starting at its smallest node.
fn covering_cycles(adjacency: &[Vec<usize>], component: &[usize]) -> Vec<Vec<usize>> {
    let mut cycles = BTreeSet::new();
    for &from in component {
        for &to in &adjacency[from] {
            if component.binary_search(&to).is_err() {
                continue;
            }
            if let Some(back) = shortest_path(adjacency, component, to, from) {
                let mut cycle = vec![from];
                cycle.extend(&back[..back.len() - 1]);
                let start = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|&(_, node)| node)
                    .map_or(0, |(at, _)| at);
                cycle.rotate_left(start);
                cycles.insert((cycle.len(), cycle));
            }
        }
    }
    cycles.into_iter().map(|(_, cycle)| cycle).collect()
}

/// A shortest path `from` … `to` (both included) that stays inside `component`.
fn shortest_path(
    adjacency: &[Vec<usize>],
    component: &[usize],
    from: usize,
    to: usize,
) -> Option<Vec<usize>> {
    let mut previous = vec![None; adjacency.len()];
    let mut seen = vec![false; adjacency.len()];
    let mut queue = VecDeque::from([from]);
    seen[from] = true;
    while let Some(node) = queue.pop_front() {
        if node == to {
            let mut path = vec![to];
            let mut at = to;
            while let Some(before) = previous[at] {
                path.push(before);
                at = before;
            }
            path.reverse();
            return Some(path);
        }
        for &next in &adjacency[node] {
            if !seen[next] && component.binary_search(&next).is_ok() {
                seen[next] = true;
                previous[next] = Some(node);
                queue.push_back(next);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::graph::Reference;
    use super::*;

    fn path(text: &str) -> ModulePath {
        ModulePath(text.split("::").map(str::to_owned).collect())
    }

    fn graph(edges: &[(&str, &str)]) -> ModuleGraph {
        let mut graph =
            ModuleGraph::new(edges.iter().flat_map(|(from, to)| [path(from), path(to)]));
        for (from, to) in edges {
            let reference = Reference {
                file: PathBuf::from(format!("src/{from}.rs")),
                line: 1,
                written: format!("crate::{to}"),
                count: 1,
            };
            graph.add_reference(&path(from), &path(to), reference);
        }
        graph
    }

    fn names(cycle: &[ModulePath]) -> Vec<String> {
        cycle.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn finds_no_group_in_a_graph_without_cycles() {
        let graph = graph(&[("a", "b"), ("b", "c"), ("a", "c")]);
        assert!(find(&graph).is_empty());
    }

    #[test]
    fn lists_a_shortest_cycle_through_every_edge_of_a_group() {
        // a ⇄ b, and b → c → a: two cycles, and d hangs off the group without being in it.
        let graph = graph(&[("a", "b"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "d")]);
        let groups = find(&graph);
        assert_eq!(groups.len(), 1);
        assert_eq!(names(&groups[0].modules), ["a", "b", "c"]);
        let cycles = groups[0]
            .cycles
            .iter()
            .map(|c| names(c))
            .collect::<Vec<_>>();
        assert_eq!(cycles, [vec!["a", "b"], vec!["a", "b", "c"]]);
    }

    #[test]
    fn keeps_separate_groups_apart() {
        let graph = graph(&[("a", "b"), ("b", "a"), ("b", "c"), ("c", "d"), ("d", "c")]);
        let groups = find(&graph);
        let members = groups.iter().map(|g| names(&g.modules)).collect::<Vec<_>>();
        assert_eq!(members, [vec!["a", "b"], vec!["c", "d"]]);
    }
}
