//! The layer rules of docs/ARCHITECTURE.md §1, checked on the source: a module may only
//! use modules of lower layers (never one of its own layer, never one above), and no
//! files import each other in a circle. Reads `crate::…`, `super::…` and `self::…` paths
//! in the code (comments left out); nothing is compiled or run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module of `src/` and its layer, lowest first (ARCHITECTURE.md §1).
const LAYERS: &[(&str, u32)] = &[
    ("clock", 0),
    ("error", 0),
    ("topic", 1),
    ("envelope", 1),
    ("metrics", 1),
    ("keys", 2),
    ("auth", 2),
    ("config", 3),
    ("message", 4),
    ("store", 5),
    ("wire", 6),
    ("delivery", 6),
    ("groups", 7),
    ("ops", 8),
    ("gateway", 9),
    ("stats", 9),
    ("tail", 9),
    ("server", 10),
    ("cli", 11),
    ("lib", 12),
    ("main", 12),
    ("bin", 12),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without `//` comments (doc comments included).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read file");
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The top-level module a file belongs to (`src/gateway/ws.rs` → `gateway`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Every path that starts with `prefix` (`crate::`, `super::`, `self::`), as segments,
/// including the members of `{…}` groups (`use crate::a::{b, c::d}` → a::b, a::c::d).
fn paths(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(found) = code[at..].find(prefix) {
        let start = at + found;
        at = start + prefix.len();
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let mut segments = Vec::new();
        let rest = &code[at..];
        let mut end = 0;
        for part in rest.split("::") {
            let ident: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            end += part.len() + 2;
            if ident.is_empty() {
                break;
            }
            segments.push(ident.clone());
            if ident.len() != part.len() {
                break;
            }
        }
        let _ = end;
        if let Some(group) = rest.find('{').filter(|&b| {
            let before = &rest[..b];
            before.chars().all(|c| c.is_alphanumeric() || c == '_' || c == ':')
        }) {
            // A group: take each member's first segment under the common path.
            let inner = &rest[group + 1..rest[group..].find('}').map_or(rest.len(), |e| group + e)];
            for member in inner.split(',') {
                let first: String = member.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !first.is_empty() && first != "self" {
                    let mut path = segments.clone();
                    path.push(first);
                    out.push(path);
                }
            }
        }
        if !segments.is_empty() {
            out.push(segments);
        }
    }
    out
}

/// The file a path leads to, starting in `dir`: the deepest existing module file.
fn resolve(dir: &Path, segments: &[String]) -> Option<PathBuf> {
    let mut dir = dir.to_path_buf();
    let mut file = None;
    for seg in segments {
        let as_file = dir.join(format!("{seg}.rs"));
        let as_dir = dir.join(seg).join("mod.rs");
        if as_file.exists() {
            file = Some(as_file);
            dir = dir.join(seg);
        } else if as_dir.exists() {
            file = Some(as_dir);
            dir = dir.join(seg);
        } else {
            break;
        }
    }
    file
}

/// The directory whose module a file's `super::` names, and its module file.
fn parent_module(file: &Path) -> (PathBuf, PathBuf) {
    let dir = file.parent().expect("parent").to_path_buf();
    let is_mod = file.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs");
    let dir = if is_mod { dir.parent().expect("grandparent").to_path_buf() } else { dir };
    let module_file = if dir == src() { src().join("lib.rs") } else { dir.join("mod.rs") };
    (dir, module_file)
}

/// File → files it uses.
fn graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges = BTreeMap::new();
    for file in &files {
        let code = code(file);
        let mut uses = BTreeSet::new();
        for path in paths(&code, "crate::") {
            if let Some(target) = resolve(&src(), &path) {
                uses.insert(target);
            }
        }
        let (parent_dir, parent_file) = parent_module(file);
        for path in paths(&code, "super::") {
            uses.insert(resolve(&parent_dir, &path).unwrap_or_else(|| parent_file.clone()));
        }
        if file.file_name().is_some_and(|n| n == "mod.rs") {
            let here = file.parent().expect("dir");
            for path in paths(&code, "self::") {
                if let Some(target) = resolve(here, &path) {
                    uses.insert(target);
                }
            }
        }
        uses.remove(file);
        edges.insert(file.clone(), uses);
    }
    edges
}

#[test]
fn no_module_uses_one_of_its_own_layer_or_above() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut violations = Vec::new();
    for (file, uses) in graph() {
        let from = module_of(&file);
        let Some(&rank) = layers.get(from.as_str()) else {
            violations
                .push(format!("{} belongs to no layer: add `{from}` to LAYERS and ARCHITECTURE.md §1", file.display()));
            continue;
        };
        for target in uses {
            let to = module_of(&target);
            if to == from {
                continue;
            }
            let Some(&to_rank) = layers.get(to.as_str()) else { continue };
            if to_rank >= rank {
                violations.push(format!(
                    "{} ({from}, layer {rank}) uses {} ({to}, layer {to_rank})",
                    file.strip_prefix(src()).unwrap_or(&file).display(),
                    target.strip_prefix(src()).unwrap_or(&target).display()
                ));
            }
        }
    }
    assert!(violations.is_empty(), "imports against the layers:\n{}", violations.join("\n"));
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let graph = graph();
    // Depth-first search with colours: a grey node reached again closes a circle.
    fn visit(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        colour: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
        circles: &mut Vec<String>,
    ) {
        colour.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match colour.get(next).copied().unwrap_or(0) {
                0 => visit(next, graph, colour, stack, circles),
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let names: Vec<String> = stack[from..]
                        .iter()
                        .map(|p| p.strip_prefix(src()).unwrap_or(p).display().to_string())
                        .collect();
                    circles.push(names.join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(node.clone(), 2);
    }
    let mut colour = BTreeMap::new();
    let mut circles = Vec::new();
    for node in graph.keys() {
        if colour.get(node).copied().unwrap_or(0) == 0 {
            visit(node, &graph, &mut colour, &mut Vec::new(), &mut circles);
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn the_checker_sees_imports() {
    // A use of a higher layer written the usual ways is found (the checker is not blind).
    let code =
        "use crate::gateway::frames::{Encoding, ServerFrame};\nlet x = crate::ops::Ops::new();\nuse super::{a, b::c};";
    let crate_paths = paths(code, "crate::");
    assert!(crate_paths.contains(&vec!["gateway".into(), "frames".into(), "Encoding".into()]), "{crate_paths:?}");
    assert!(crate_paths.contains(&vec!["ops".into(), "Ops".into(), "new".into()]), "{crate_paths:?}");
    let super_paths = paths(code, "super::");
    assert!(super_paths.contains(&vec!["a".into()]) && super_paths.contains(&vec!["b".into()]), "{super_paths:?}");
    assert_eq!(module_of(&src().join("gateway/ws.rs")), "gateway");
    assert_eq!(
        resolve(&src(), &["gateway".into(), "frames".into(), "Encoding".into()]),
        Some(src().join("gateway/frames.rs"))
    );
}
