//! ARCHITECTURE.md's layering, checked: no import cycle between rtcam's modules, at the level
//! of top-level modules (`config`, `media`, `session` …) and of their submodules
//! (`session::table`, `media::encoder` …). A cycle means two parts that can only be understood,
//! changed and tested together; this test names the edges that close one.
//!
//! The scan reads `crate::` paths (in `use` lists and inline) from every file under `src/`,
//! without the `#[cfg(test)] mod tests` tail of a file: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every module of the crate, as a `::`-path, with the file that holds it.
fn modules(src: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension() != Some(std::ffi::OsStr::new("rs")) {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            out.push((parts.join("::"), path));
        }
    }
    out
}

/// The code of a file without its unit tests.
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// Every `crate::a::b::c` path in the code, with `use crate::{a::b, c::{d, e}}` trees expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let used = use_tree(rest, "", &mut paths);
        rest = &rest[used..];
    }
    paths
}

/// Expands one use tree (`a::b`, `a::{b, c::d}`, `{a, b}`) under `prefix`; returns the bytes read.
fn use_tree(text: &str, prefix: &str, out: &mut Vec<String>) -> usize {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let head = text[..end].trim_end_matches(':');
    let path = match (prefix.is_empty(), head.is_empty()) {
        (true, _) => head.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}::{head}"),
    };
    if !text[end..].starts_with('{') {
        if !path.is_empty() {
            out.push(path);
        }
        return end;
    }
    let mut at = end + 1;
    loop {
        let item = &text[at..];
        let skipped = item.len() - item.trim_start().len();
        at += skipped;
        if text[at..].starts_with('}') || at >= text.len() {
            return (at + 1).min(text.len());
        }
        at += use_tree(&text[at..], &path, out);
        let tail = &text[at..];
        let next = tail.find([',', '}']).unwrap_or(tail.len());
        at += next;
        if text[at..].starts_with(',') {
            at += 1;
        }
    }
}

/// The module a path names or lies in, cut to `depth` segments.
fn owning_module(path: &str, known: &BTreeSet<String>, depth: usize) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| known.contains(candidate))
        .map(|module| cut(&module, depth))
}

fn cut(module: &str, depth: usize) -> String {
    module
        .split("::")
        .take(depth)
        .collect::<Vec<_>>()
        .join("::")
}

/// True when one module contains the other: a parent and its children always know each other.
fn nested(a: &str, b: &str) -> bool {
    a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

fn graph(depth: usize) -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let known: BTreeSet<String> = mods.iter().map(|(m, _)| m.clone()).collect();
    let mut graph = Graph::new();
    for (module, file) in &mods {
        let from = cut(module, depth);
        let text = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(without_tests(&text)) {
            if let Some(to) = owning_module(&path, &known, depth) {
                if to != from && !nested(&from, &to) {
                    graph.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    graph
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let lw = s.low[w.as_str()];
                s.low.entry(v).and_modify(|l| *l = (*l).min(lw));
            } else if s.stack.contains(&w.as_str()) {
                let iw = s.index[w.as_str()];
                s.low.entry(v).and_modify(|l| *l = (*l).min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let at = s.stack.iter().rposition(|x| *x == v).unwrap();
            let component: Vec<String> = s.stack.drain(at..).map(String::from).collect();
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

fn explain(graph: &Graph, found: &[Vec<String>]) -> String {
    let mut text = String::new();
    for component in found {
        text.push_str(&format!("cycle among {}:\n", component.join(", ")));
        for from in component {
            let inside: Vec<&str> = graph[from]
                .iter()
                .filter(|to| component.contains(to))
                .map(String::as_str)
                .collect();
            text.push_str(&format!("  {from} -> {}\n", inside.join(", ")));
        }
    }
    text
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let graph = graph(1);
    let found = cycles(&graph);
    assert!(found.is_empty(), "{}", explain(&graph, &found));
}

#[test]
fn submodules_have_no_import_cycle() {
    let graph = graph(2);
    let found = cycles(&graph);
    assert!(found.is_empty(), "{}", explain(&graph, &found));
}

#[test]
fn the_scan_sees_grouped_and_inline_paths() {
    let code = "use crate::{config::Config, media::{encoder, Media}};\nfn f() { crate::session::table::Label::new(); }";
    assert_eq!(
        crate_paths(code),
        [
            "config::Config",
            "media::encoder",
            "media::Media",
            "session::table::Label::new"
        ]
    );
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .into_iter()
        .fold(Graph::new(), |mut g, (x, y)| {
            g.entry(x.into()).or_default().insert(y.into());
            g
        });
    assert_eq!(cycles(&graph).len(), 1);
}
