//! The source layout, checked: each room of `src/` imports only the rooms below it, and no two
//! files import each other, directly or in a circle. Rooms, bottom up: `api` (shared vocabulary,
//! no I/O), `coder` (the Coder client) and `process` (plumbing), `cli` (the command line), then
//! the two programs, `operator` and `client`, which never import each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each room may import (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("api", &[]),
    ("coder", &[]),
    ("process", &[]),
    ("cli", &["api", "process"]),
    ("operator", &["api", "coder", "process", "cli"]),
    // The client side reads build log pages in the Coder client's shape (`coder::logs`).
    ("client", &["api", "coder", "process", "cli"]),
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/operator/streams/mod.rs` -> `operator::streams`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    parts.join("::")
}

/// The `crate::…` paths a file names (its `super::…` paths resolved against `parent`), outside
/// comments and its own `#[cfg(test)]` tail.
fn crate_paths(text: &str, parent: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let code = code.replace("super::", &format!("crate::{parent}::"));
    let mut paths = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.push(path.trim_end_matches(':').to_owned());
            // `crate::api::{crd, reason}`: each braced name is a module of that path.
            if let Some(open) = rest.strip_prefix(&format!("{path}{{")) {
                let inner: String = open.chars().take_while(|c| *c != '}').collect();
                for name in inner.split(',') {
                    let name = name.trim().split("::").next().unwrap_or_default();
                    if !name.is_empty() && name != "self" {
                        paths.push(format!("{}::{name}", path.trim_end_matches(':')));
                    }
                }
            }
        }
    }
    paths
}

/// The deepest known module a path names (`api::crd::Phase` -> `api::crd`).
fn target(modules: &BTreeSet<String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        if from == "lib" || from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read file");
        // `super` is the module above (for a `mod.rs`, above its folder's module).
        let parent = from
            .rsplit_once("::")
            .map_or(String::new(), |(p, _)| p.to_owned());
        let to: BTreeSet<String> = crate_paths(&text, &parent)
            .iter()
            .filter_map(|p| target(&modules, p))
            .filter(|t| *t != from && !from.starts_with(&format!("{t}::")))
            .collect();
        edges.insert(from, to);
    }
    edges
}

fn room(module: &str) -> &str {
    module.split("::").next().unwrap_or_default()
}

#[test]
fn each_room_imports_only_the_rooms_below_it() {
    let edges = graph();
    let count: usize = edges.values().map(BTreeSet::len).sum();
    assert!(
        count > 50,
        "only {count} imports read: the reader is broken"
    );
    let mut wrong = Vec::new();
    for (from, tos) in edges {
        let from_room = room(&from);
        let allowed = ALLOWED
            .iter()
            .find(|(r, _)| *r == from_room)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{from} is in no known room"));
        for to in tos {
            let to_room = room(&to);
            if to_room != from_room && !allowed.contains(&to_room) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up or across: {wrong:#?}"
    );
}

#[test]
fn no_module_imports_itself_through_a_circle() {
    let edges = graph();
    // Depth-first search with colours: a grey node met again closes a circle.
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        circles: &mut Vec<String>,
    ) {
        colour.insert(node, 1);
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            match colour.get(next.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|n| n == next).unwrap_or(0);
                    circles.push(format!("{} -> {next}", stack[start..].join(" -> ")));
                }
                Some(_) => {}
                None => visit(next, edges, colour, stack, circles),
            }
        }
        stack.pop();
        colour.insert(node, 2);
    }
    let mut colour = BTreeMap::new();
    let mut circles = Vec::new();
    for node in edges.keys() {
        if !colour.contains_key(node.as_str()) {
            visit(node, &edges, &mut colour, &mut Vec::new(), &mut circles);
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}
