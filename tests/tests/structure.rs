//! The worker's structure, kept by test (issue 21): its modules form no import cycle (each
//! uses only modules below it), and one module, `settle`, acks, Naks or terminates a job's
//! message. Production code only: everything from a file's `#[cfg(test)]` on is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use helmq_tests::workspace_root;

/// The production part of a source file.
fn production(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The worker's top-level modules (a folder `driver/` counts as `driver`) and their sources.
fn worker_modules() -> BTreeMap<String, String> {
    let src = workspace_root().join("worker/src");
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read worker/src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).expect("under src");
            let top = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a name")
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" || top == "main" {
                continue;
            }
            modules.entry(top).or_default().push_str(&production(&path));
        }
    }
    modules
}

/// `crate::<module>` paths named in `source`, `use crate::{a, b}` groups included.
fn uses(source: &str, modules: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in source.match_indices("crate::") {
        let rest = &source[i + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => top_level_items(group)
                .into_iter()
                .map(|item| item.trim().split("::").next().unwrap_or_default())
                .collect(),
            None => vec![
                rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default(),
            ],
        };
        found.extend(
            names
                .into_iter()
                .filter(|name| modules.contains_key(*name))
                .map(str::to_owned),
        );
    }
    found
}

/// The comma-separated items of a `{…}` group up to its closing brace (`group` starts after
/// the opening one), nested groups kept whole.
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

#[test]
fn the_workers_modules_form_no_import_cycle() {
    let modules = worker_modules();
    assert!(
        modules.contains_key("settle") && modules.contains_key("job"),
        "{:?}",
        modules.keys()
    );
    let graph: BTreeMap<&str, BTreeSet<String>> = modules
        .iter()
        .map(|(name, source)| {
            let mut used = uses(source, &modules);
            used.remove(name);
            (name.as_str(), used)
        })
        .collect();
    // Kahn's algorithm: a module is placed once everything it uses is placed.
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    loop {
        let ready: Vec<&str> = graph
            .iter()
            .filter(|(name, used)| {
                !placed.contains(*name) && used.iter().all(|u| placed.contains(u.as_str()))
            })
            .map(|(name, _)| *name)
            .collect();
        if ready.is_empty() {
            break;
        }
        placed.extend(ready);
    }
    let in_cycles: BTreeMap<&str, &BTreeSet<String>> = graph
        .iter()
        .filter(|(name, _)| !placed.contains(*name))
        .map(|(name, used)| (*name, used))
        .collect();
    assert!(
        in_cycles.is_empty(),
        "worker modules on an import cycle (module -> what it uses): {in_cycles:#?}"
    );
}

#[test]
fn only_settle_acks_naks_or_terminates_a_job_message() {
    const SETTLING: [&str; 6] = [
        ".ack()",
        ".ack_with(",
        ".double_ack()",
        ".double_ack_with(",
        "AckKind::",
        ".nak(",
    ];
    let offenders: Vec<(String, &str)> = worker_modules()
        .into_iter()
        .filter(|(name, _)| name != "settle")
        .flat_map(|(name, source)| {
            SETTLING
                .iter()
                .filter(|call| source.contains(**call))
                .map(|call| (name.clone(), *call))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "only worker/src/settle.rs may settle a job's message: {offenders:?}"
    );
    let settle = production(&workspace_root().join("worker/src/settle.rs"));
    assert!(
        SETTLING.iter().any(|call| settle.contains(call)),
        "settle.rs settles nothing: the check above would be vacuous"
    );
}

#[test]
fn the_import_parser_reads_groups_and_paths() {
    let modules: BTreeMap<String, String> = ["a", "b", "c"]
        .map(|m| (m.to_owned(), String::new()))
        .into();
    let found = uses(
        "use crate::a::X;\nuse crate::{b::{Y, Z}, c};\nfn f() { crate::zz::q() }",
        &modules,
    );
    assert_eq!(found, ["a", "b", "c"].map(str::to_owned).into());
}
