//! The agent's layering, checked: each top-level module of `monitor/src` may import only the
//! modules the README's architecture section places on a lower layer, so there are no import
//! cycles; and no file grows past 500 lines (its tests aside).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The layer table of the README: module name -> layer number.
fn layers() -> BTreeMap<String, u32> {
    let readme = include_str!("../../README.md");
    let table = readme
        .split("<!-- layers -->")
        .nth(1)
        .expect("README.md has a layer table between <!-- layers --> markers");
    let mut out = BTreeMap::new();
    for line in table.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else { continue };
        for name in cells[2].split(',') {
            out.insert(name.trim().trim_matches('`').to_owned(), layer);
        }
    }
    out
}

/// Source files of a top-level module (`name.rs`, and `name/` when it is a directory).
fn files(src: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let file = src.join(format!("{name}.rs"));
    if file.exists() {
        out.push(file);
    }
    let mut stack = vec![src.join(name)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The code of a file without its unit tests (`#[cfg(test)] mod tests` and `tests.rs`).
fn code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The top-level modules a piece of code names through `crate::`, in `use` lines or paths.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    // `use crate::{a::x, b::{y, z}};` across lines: the names at the group's first level.
    let mut rest = code;
    while let Some(i) = rest.find("crate::{") {
        rest = &rest[i + "crate::{".len()..];
        let (mut depth, mut item_start) = (0, true);
        for (j, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    rest = &rest[j..];
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                c if item_start && (c.is_alphanumeric() || c == '_') => {
                    let name: String =
                        rest[j..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    out.insert(name);
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    out.remove("self");
    out
}

/// Top-level modules of the crate and what each imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules: Vec<String> = lib
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter_map(|l| l.trim().strip_prefix("pub mod ").or_else(|| l.trim().strip_prefix("mod ")))
        .map(|l| l.trim_end_matches(';').to_owned())
        .filter(|m| !matches!(m.as_str(), "golden" | "layering"))
        .collect();
    modules
        .iter()
        .map(|m| {
            let mut deps: BTreeSet<String> = files(&src, m).iter().flat_map(|f| imports(&code(f))).collect();
            deps.remove(m);
            deps.retain(|d| modules.contains(d));
            (m.clone(), deps)
        })
        .collect()
}

#[test]
fn every_module_imports_only_lower_layers() {
    let layers = layers();
    let mut wrong = Vec::new();
    for (module, deps) in graph() {
        let Some(&mine) = layers.get(&module) else {
            wrong.push(format!("{module} is not in the README's layer table"));
            continue;
        };
        for d in deps {
            match layers.get(&d) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => wrong.push(format!("{module} (layer {mine}) imports {d} (layer {theirs})")),
                None => wrong.push(format!("{d} is not in the README's layer table")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|p| p == m).unwrap_or(0);
                return Some(path[from..].iter().cloned().chain([m.to_owned()]).collect());
            }
            _ => {}
        }
        state.insert(m.to_owned(), 1);
        path.push(m.to_owned());
        for d in g.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(d, g, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(m.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if let Some(cycle) = visit(m, &g, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_import_reader_sees_groups_and_paths() {
    let found = imports(
        "use crate::{\n    alerts::AlertBook,\n    api::{self, ApiState},\n    cli::prepare::{Places, Prepared},\n};\nfn f() { crate::probe::FlowMap::take(); }\n// crate::config in a comment\n",
    );
    assert_eq!(found, ["alerts", "api", "cli", "probe"].map(String::from).into_iter().collect());
}

#[test]
fn no_file_is_over_500_lines_tests_aside() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut long = Vec::new();
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let n = code(&p).lines().count();
                if n > 500 {
                    long.push(format!("{} ({n} lines)", p.display()));
                }
            }
        }
    }
    assert!(long.is_empty(), "split these files: {}", long.join(", "));
}
